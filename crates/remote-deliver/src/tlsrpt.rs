//! TLS reporting in remote-deliver (RFC 8460; the file format and the JSON are
//! ferry_common::tlsrpt): each delivery attempt to a domain whose MTA-STS policy applies
//! records its outcome, and the reports of finished periods are mailed, gzipped, to the
//! `rua` of `_smtp._tls.DOMAIN` (RFC 8460 §5.3), then their files removed. Several
//! remote-deliver processes share queue/tlsrpt: the one that locks a file sends it.

use crate::deliver::Ctx;
use base64::Engine;
use ferry_common::envelope::Envelope;
use ferry_common::tlsrpt::{self, Meta, Outcome};
use ferry_common::{date, inject, log};
use std::io::Write;
use std::path::Path;

/// The RFC 8460 §4.3 result type of a failed attempt's text (deliver.rs's texts), or None
/// when it was no TLS failure (a refused connection, a server that said no).
pub fn failure_kind(why: &str) -> Option<&'static str> {
    let w = why.to_ascii_lowercase();
    if why.starts_with("4.7.4") {
        Some("starttls-not-supported")
    } else if !why.starts_with("4.7.5") {
        None
    } else if w.contains("notvalidforname") || w.contains("not valid for name") {
        Some("certificate-host-mismatch")
    } else if w.contains("expired") {
        Some("certificate-expired")
    } else if w.contains("unknownissuer") || w.contains("unknown issuer") {
        Some("certificate-not-trusted")
    } else {
        Some("validation-failure")
    }
}

pub fn record(ctx: &Ctx, domain: &str, o: &Outcome<'_>) {
    let now = date::now_secs();
    if let Err(e) = tlsrpt::record(&ctx.tlsrpt_dir, domain, ctx.cfg.tlsrptperiod, now, o) {
        log!(
            "{domain}: cannot record the TLS outcome in {}: {e}",
            ctx.tlsrpt_dir.display()
        );
    }
}

/// Mails the reports of the periods that have ended.
pub async fn send_finished(ctx: &Ctx) {
    let now = date::now_secs();
    let period = ctx.cfg.tlsrptperiod.max(1);
    let Ok(dir) = std::fs::read_dir(&ctx.tlsrpt_dir) else {
        return;
    };
    for e in dir.flatten().take(1000) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((domain, start)) = tlsrpt::parse_name(&name) else {
            continue;
        };
        if start.saturating_add(period) > now {
            continue;
        }
        let path = e.path();
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        // Whoever holds the lock sends it; the others skip it.
        let Ok(_lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            continue;
        };
        if !path.exists() {
            continue;
        }
        match send_one(ctx, &domain, start, start.saturating_add(period - 1), &path).await {
            Ok(what) => {
                log!("{domain}: TLS report for {}: {what}", date::iso(start));
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => log!(
                "{domain}: cannot send the TLS report for {} ({e}); trying again later",
                date::iso(start)
            ),
        }
    }
}

async fn send_one(
    ctx: &Ctx,
    domain: &str,
    start: u64,
    end: u64,
    path: &Path,
) -> Result<String, String> {
    let summary = tlsrpt::read(path).map_err(|e| e.to_string())?;
    let records = crate::sts::txt_records(ctx, &format!("_smtp._tls.{domain}")).await?;
    let to = tlsrpt::rua(&records);
    if to.is_empty() {
        return Ok("no rua in _smtp._tls TXT: not sent".into());
    }
    let me = &ctx.cfg.me;
    let id = format!("{start}.{domain}@{me}");
    let policy = std::fs::read_to_string(ctx.sts_dir.join(domain))
        .ok()
        .map(|t| tlsrpt::policy_from_cache(&t));
    let contact = format!("{}@{me}", ctx.cfg.bouncefrom);
    let json = tlsrpt::report_json(
        &Meta {
            me,
            contact: &contact,
            report_id: &id,
            domain,
            start,
            end,
            policy,
        },
        &summary,
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json.as_bytes()).map_err(|e| e.to_string())?;
    let gz = gz.finish().map_err(|e| e.to_string())?;
    let message = mail(me, &contact, &to, domain, &id, start, end, &gz);
    let env = Envelope {
        sender: String::new(),
        recipients: to.clone(),
        ..Default::default()
    };
    let r =
        inject::run_queue(&ctx.root, &mut message.as_slice(), &env).map_err(|e| e.to_string())?;
    if r.code != 0 {
        return Err(r.reason());
    }
    Ok(format!(
        "{} successful, {} failed sessions; sent to {}",
        summary.successes,
        summary.failed(),
        to.join(", ")
    ))
}

/// The report mail (RFC 8460 §5.3): multipart/report; report-type="tlsrpt", a text part and
/// the gzipped JSON as application/tlsrpt+gzip, base64.
#[allow(clippy::too_many_arguments)]
fn mail(
    me: &str,
    from: &str,
    to: &[String],
    domain: &str,
    id: &str,
    start: u64,
    end: u64,
    gz: &[u8],
) -> Vec<u8> {
    let now = date::now_secs();
    let boundary = format!("tlsrpt-{start}-{now}");
    let file = format!("{me}!{domain}!{start}!{end}.json.gz");
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz);
    let mut m = String::new();
    m.push_str(&format!("Date: {}\n", date::rfc5322(now)));
    m.push_str(&format!("From: TLS reporting <{from}>\n"));
    m.push_str(&format!(
        "To: {}\n",
        to.iter()
            .map(|a| format!("<{a}>"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    m.push_str(&format!(
        "Subject: Report Domain: {domain} Submitter: {me} Report-ID: <{id}>\n"
    ));
    m.push_str(&format!("Message-ID: <{now}.tlsrpt.{id}>\n"));
    m.push_str(&format!(
        "TLS-Report-Domain: {domain}\nTLS-Report-Submitter: {me}\n"
    ));
    m.push_str("Auto-Submitted: auto-generated\nMIME-Version: 1.0\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=\"tlsrpt\";\n\tboundary=\"{boundary}\"\n\n"
    ));
    m.push_str(&format!(
        "--{boundary}\nContent-Type: text/plain; charset=us-ascii\n\nThe TLS report of {me} for mail to {domain}, {} to {}.\n\n",
        date::iso(start),
        date::iso(end)
    ));
    m.push_str(&format!(
        "--{boundary}\nContent-Type: application/tlsrpt+gzip; name=\"{file}\"\nContent-Disposition: attachment; filename=\"{file}\"\nContent-Transfer-Encoding: base64\n\n"
    ));
    for chunk in b64.as_bytes().chunks(76) {
        m.push_str(&String::from_utf8_lossy(chunk));
        m.push('\n');
    }
    m.push_str(&format!("\n--{boundary}--\n"));
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            failure_kind("4.7.4 mx does not offer STARTTLS"),
            Some("starttls-not-supported")
        );
        assert_eq!(
            failure_kind(
                "4.7.5 TLS required and failed: TLS handshake with mx failed: invalid peer certificate: NotValidForName"
            ),
            Some("certificate-host-mismatch")
        );
        assert_eq!(
            failure_kind("4.7.5 ...: invalid peer certificate: UnknownIssuer"),
            Some("certificate-not-trusted")
        );
        assert_eq!(
            failure_kind("cannot connect to mx[192.0.2.1]:25: refused"),
            None
        );
    }
}
