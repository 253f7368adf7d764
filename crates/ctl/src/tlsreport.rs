//! `ferryctl tls report DOMAIN`: the TLS report (RFC 8460 JSON) of the current period for
//! mail to DOMAIN, from remote-deliver's queue/tlsrpt/DOMAIN.START (ferry_common::tlsrpt),
//! as it would be mailed at the period's end.

use anyhow::Result;
use ferry_common::config::Config;
use ferry_common::root::Root;
use ferry_common::{date, tlsrpt};

pub fn report(root: &Root, domain: &str) -> Result<Vec<String>> {
    let cfg = Config::load(root).map_err(|e| crate::problem(e.to_string()))?;
    let dir = root.queue().join("tlsrpt");
    let period = cfg.tlsrptperiod.max(1);
    let now = date::now_secs();
    let path = tlsrpt::file_for(&dir, domain, period, now);
    let summary = match tlsrpt::read(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => tlsrpt::Summary::default(),
        Err(e) => return Err(crate::problem(format!("{}: {e}", path.display()))),
    };
    let start = now - now % period;
    let policy =
        std::fs::read_to_string(root.queue().join("sts").join(domain.to_ascii_lowercase()))
            .ok()
            .map(|t| tlsrpt::policy_from_cache(&t));
    let contact = format!("{}@{}", cfg.bouncefrom, cfg.me);
    let id = format!("{start}.{}@{}", domain.to_ascii_lowercase(), cfg.me);
    let json = tlsrpt::report_json(
        &tlsrpt::Meta {
            me: &cfg.me,
            contact: &contact,
            report_id: &id,
            domain: &domain.to_ascii_lowercase(),
            start,
            end: start + period - 1,
            policy,
        },
        &summary,
    );
    Ok(vec![json.trim_end().to_string()])
}
