//! TLS reporting (RFC 8460): what remote-deliver saw of the TLS sessions to domains with an
//! MTA-STS policy, kept per domain and period, and the JSON report made of it.
//!
//! remote-deliver appends one line per session outcome to `queue/tlsrpt/DOMAIN.START`
//! (START: the period's first second, a multiple of `tlsrptperiod`, one day by default):
//!
//! ```text
//! s mx1.example.net                                 a session with a verified certificate
//! f certificate-host-mismatch mx1.example.net 192.0.2.1   a failure: result type, MX, address
//! ```
//!
//! Each line is one `write` in append mode, so remote-deliver processes may share a file.
//! After the period remote-deliver mails the report to the `rua` of `_smtp._tls.DOMAIN` and
//! removes the file; `ferryctl tls report DOMAIN` prints the current period's report.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Lines read from one file at most (a day of a busy domain is far less).
const MAX_LINES: usize = 1_000_000;

/// A session's outcome.
pub enum Outcome<'a> {
    Success {
        mx: &'a str,
    },
    /// `kind` is one of RFC 8460 §4.3's result types.
    Failure {
        kind: &'static str,
        mx: &'a str,
        ip: &'a str,
    },
}

/// The file of `domain` for the period that holds `now`.
pub fn file_for(dir: &Path, domain: &str, period: u64, now: u64) -> PathBuf {
    let start = now - now % period.max(1);
    dir.join(format!("{}.{start}", domain.to_ascii_lowercase()))
}

/// `DOMAIN.START` back into its parts.
pub fn parse_name(name: &str) -> Option<(String, u64)> {
    let (domain, start) = name.rsplit_once('.')?;
    Some((domain.to_string(), start.parse().ok()?))
}

/// Appends one outcome (a single write, so concurrent writers do not interleave a line).
pub fn record(dir: &Path, domain: &str, period: u64, now: u64, o: &Outcome<'_>) -> io::Result<()> {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .take(255)
            .collect()
    };
    let line = match o {
        Outcome::Success { mx } => format!("s {}\n", clean(mx)),
        Outcome::Failure { kind, mx, ip } => format!("f {kind} {} {}\n", clean(mx), clean(ip)),
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(file_for(dir, domain, period, now))?;
    f.write_all(line.as_bytes())
}

/// The sessions of one file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub successes: u64,
    /// (result type, MX, address) → sessions.
    pub failures: BTreeMap<(String, String, String), u64>,
}

impl Summary {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

pub fn read(path: &Path) -> io::Result<Summary> {
    let text = std::fs::read_to_string(path)?;
    let mut s = Summary::default();
    for line in text.lines().take(MAX_LINES) {
        let w: Vec<&str> = line.split(' ').collect();
        match w.as_slice() {
            ["s", _] => s.successes += 1,
            ["f", kind, mx, ip] => {
                *s.failures
                    .entry((kind.to_string(), mx.to_string(), ip.to_string()))
                    .or_insert(0) += 1
            }
            _ => {}
        }
    }
    Ok(s)
}

/// A JSON string.
fn js(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// What a report says besides the figures.
pub struct Meta<'a> {
    /// This host (`me`): organization-name and the submitter.
    pub me: &'a str,
    pub contact: &'a str,
    pub report_id: &'a str,
    pub domain: &'a str,
    pub start: u64,
    pub end: u64,
    /// The MTA-STS policy's lines and its `mx` patterns, when one is known.
    pub policy: Option<(Vec<String>, Vec<String>)>,
}

/// The report (RFC 8460 §4.4), as JSON.
pub fn report_json(m: &Meta<'_>, s: &Summary) -> String {
    let list = |v: &[String]| v.iter().map(|x| js(x)).collect::<Vec<_>>().join(", ");
    let (policy_type, policy_string, mx) = match &m.policy {
        Some((lines, mx)) => ("sts", list(lines), list(mx)),
        None => ("no-policy-found", String::new(), String::new()),
    };
    let failures: Vec<String> = s
        .failures
        .iter()
        .map(|((kind, host, ip), n)| {
            // The fields not known (a policy that could not be fetched has no MX) are left out.
            let mut f = format!("{{\"result-type\": {}", js(kind));
            if !ip.is_empty() {
                f.push_str(&format!(", \"receiving-ip\": {}", js(ip)));
            }
            if !host.is_empty() {
                f.push_str(&format!(", \"receiving-mx-hostname\": {}", js(host)));
            }
            f.push_str(&format!(", \"failed-session-count\": {n}}}"));
            f
        })
        .collect();
    format!(
        "{{\"organization-name\": {org}, \"date-range\": {{\"start-datetime\": {start}, \"end-datetime\": {end}}}, \"contact-info\": {contact}, \"report-id\": {id}, \"policies\": [{{\"policy\": {{\"policy-type\": \"{policy_type}\", \"policy-string\": [{policy_string}], \"policy-domain\": {domain}, \"mx-host\": [{mx}]}}, \"summary\": {{\"total-successful-session-count\": {ok}, \"total-failure-session-count\": {bad}}}, \"failure-details\": [{details}]}}]}}\n",
        org = js(m.me),
        start = js(&crate::date::iso(m.start)),
        end = js(&crate::date::iso(m.end)),
        contact = js(m.contact),
        id = js(m.report_id),
        domain = js(m.domain),
        ok = s.successes,
        bad = s.failed(),
        details = failures.join(", "),
    )
}

/// The policy lines (`policy-string`) and `mx` patterns of remote-deliver's cached MTA-STS
/// policy, queue/sts/DOMAIN (its own `x-ferry-` lines left out).
pub fn policy_from_cache(text: &str) -> (Vec<String>, Vec<String>) {
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("x-ferry-") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let mx = lines
        .iter()
        .filter_map(|l| l.strip_prefix("mx:"))
        .map(|m| m.trim().to_string())
        .collect();
    (lines, mx)
}

/// The `rua` mailto: addresses of an `_smtp._tls` TXT record set (RFC 8460 §3): one record
/// starting `v=TLSRPTv1`, `rua=` a comma-separated list (https: URIs are not used here).
pub fn rua(records: &[String]) -> Vec<String> {
    let ours: Vec<&String> = records
        .iter()
        .filter(|r| {
            r.split(';')
                .next()
                .is_some_and(|f| f.trim() == "v=TLSRPTv1")
        })
        .collect();
    let [record] = ours.as_slice() else {
        return Vec::new();
    };
    record
        .split(';')
        .filter_map(|f| f.trim().strip_prefix("rua="))
        .flat_map(|v| v.split(','))
        .filter_map(|u| u.trim().strip_prefix("mailto:"))
        .map(|a| a.split('!').next().unwrap_or(a).to_string())
        .filter(|a| a.contains('@') && !a.contains(char::is_whitespace))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_read_report() {
        let d = tempfile::tempdir().unwrap();
        let (p, now) = (86_400, 1_796_000_000u64);
        record(
            d.path(),
            "Far.Example",
            p,
            now,
            &Outcome::Success {
                mx: "mx1.far.example",
            },
        )
        .unwrap();
        let f = Outcome::Failure {
            kind: "certificate-expired",
            mx: "mx2.far.example",
            ip: "192.0.2.2",
        };
        record(d.path(), "far.example", p, now + 1, &f).unwrap();
        record(d.path(), "far.example", p, now + 2, &f).unwrap();
        let path = file_for(d.path(), "far.example", p, now);
        assert_eq!(
            parse_name(path.file_name().unwrap().to_str().unwrap()),
            Some(("far.example".into(), now - now % p))
        );
        let s = read(&path).unwrap();
        assert_eq!((s.successes, s.failed()), (1, 2));
        let json = report_json(
            &Meta {
                me: "mx.example.org",
                contact: "postmaster@example.org",
                report_id: "r1",
                domain: "far.example",
                start: 0,
                end: 86_399,
                policy: Some((vec!["version: STSv1".into()], vec!["*.far.example".into()])),
            },
            &s,
        );
        assert!(
            json.contains("\"total-successful-session-count\": 1"),
            "{json}"
        );
        assert!(
            json.contains("\"result-type\": \"certificate-expired\""),
            "{json}"
        );
        assert!(json.contains("\"failed-session-count\": 2"), "{json}");
        assert!(
            json.contains("\"start-datetime\": \"1970-01-01T00:00:00Z\""),
            "{json}"
        );
    }

    #[test]
    fn rua_records() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rua(&r(&[
                "v=TLSRPTv1; rua=mailto:a@x.example,https://r.example/x,mailto:b@y.example!10m"
            ])),
            ["a@x.example", "b@y.example"]
        );
        assert!(
            rua(&r(&[
                "v=TLSRPTv1;rua=mailto:a@x",
                "v=TLSRPTv1;rua=mailto:b@y"
            ]))
            .is_empty()
        );
        assert!(rua(&r(&["v=spf1 -all"])).is_empty());
    }
}
