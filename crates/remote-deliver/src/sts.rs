//! MTA-STS (RFC 8461): a domain that publishes `_mta-sts.DOMAIN` TXT (`v=STSv1; id=...`) and a
//! policy at `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (`mode`, `mx`, `max_age`) says
//! which MX hosts may take its mail, and that they must do so over TLS with a certificate
//! valid for their name.
//!
//! - The policy is fetched over HTTPS with the verified TLS settings (system roots plus
//!   control/tlsca), HTTP/1.0 so that no chunked body comes back, no redirect followed, at
//!   most 64 KiB, within [`FETCH_LIMIT`]; the address of `mta-sts.DOMAIN` comes from the same
//!   resolver as the MX records, the port is `mtastsport` (443).
//! - It is cached in queue/sts/DOMAIN (ferryr's) for `max_age` seconds: used while the TXT
//!   record's id is the cached one, or the TXT record or the new policy cannot be had (RFC
//!   8461 §5.1); fetched again when the id changes or the cache expired, but not within
//!   [`FETCH_RETRY`] of a failed fetch. No TXT record and no cached policy: no policy.
//! - `enforce`: only MX hosts matching an `mx` pattern are used, each over verified TLS, or
//!   the mail waits (4.7.5). `testing`: delivery as without a policy; the hosts that enforce
//!   would skip are logged. `none`: no policy.
//!
//! smtproutes and address literals are the administrator's routing: no policy applies.

use crate::deliver::Ctx;
use ferry_common::{date, log};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest policy taken (RFC 8461 §3.3 suggests 64 KiB); the response header may add 16 KiB.
const MAX_POLICY: usize = 64 * 1024;
const MAX_HEADER: usize = 16 * 1024;
/// The longest `max_age` (RFC 8461 §3.2: about a year).
const MAX_AGE_LIMIT: u64 = 31_557_600;
/// The whole fetch of one policy: connect, handshake, request, response.
pub const FETCH_LIMIT: Duration = Duration::from_secs(30);
/// After a failed fetch the domain's policy server is not asked again for this long (every
/// delivery to it would otherwise wait up to FETCH_LIMIT for a server that is down).
pub const FETCH_RETRY: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub mx: Vec<String>,
    pub max_age: u64,
    /// The TXT record's id it was fetched under.
    pub id: String,
    /// When it was fetched (unix seconds).
    pub fetched: u64,
}

impl Policy {
    pub fn fresh(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.max_age)
    }

    /// Whether `host` matches one of the `mx` patterns.
    pub fn allows(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }

    /// The cache file: the policy's own fields, then ours (ignored as unknown keys by the parser).
    fn cache_text(&self) -> String {
        let mut s = format!("version: STSv1\nmode: {}\n", self.mode.name());
        for m in &self.mx {
            s.push_str(&format!("mx: {m}\n"));
        }
        s.push_str(&format!(
            "max_age: {}\nx-ferry-id: {}\nx-ferry-fetched: {}\n",
            self.max_age, self.id, self.fetched
        ));
        s
    }

    fn from_cache(text: &str) -> Option<Policy> {
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        let id = field("x-ferry-id:")?;
        let fetched = field("x-ferry-fetched:")?.parse().ok()?;
        parse(text, &id, fetched).ok()
    }
}

/// `*.example.net` matches one more label in front (`mx1.example.net`, not `a.b.example.net`);
/// other patterns match the name itself. Case and a final dot do not matter.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let p = pattern.trim_end_matches('.').to_ascii_lowercase();
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    match p.strip_prefix("*.") {
        Some(rest) => h
            .split_once('.')
            .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
        None => p == h,
    }
}

/// The id of the one `v=STSv1` record among a name's TXT records (RFC 8461 §3.1: none, or
/// more than one, or one without a valid id, is no policy).
pub fn txt_id(records: &[String]) -> Option<String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.split(';').next().is_some_and(|f| f.trim() == "v=STSv1"))
        .collect();
    let [record] = sts.as_slice() else {
        return None;
    };
    let id = record
        .split(';')
        .filter_map(|f| f.trim().split_once('='))
        .find(|(k, _)| *k == "id")
        .map(|(_, v)| v.trim())?;
    (!id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| id.to_string())
}

/// A policy's text (RFC 8461 §3.2): `key: value` lines ended by LF or CRLF; `version: STSv1`,
/// `mode` and `max_age` required, one or more `mx` unless the mode is none; other keys ignored.
pub fn parse(body: &str, id: &str, fetched: u64) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age, mut mx) = (None, None, None, Vec::new());
    for line in body.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(format!("not a `key: value` line: {}", log::quote(line, 80)));
        };
        let v = v.trim();
        match k.trim() {
            "version" => version = Some(v.to_string()),
            "mode" => {
                mode = Some(match v {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode {}", log::quote(other, 40))),
                })
            }
            "max_age" => {
                let n: u64 = v
                    .parse()
                    .ok()
                    .filter(|_| v.len() <= 10)
                    .ok_or_else(|| format!("bad max_age {}", log::quote(v, 40)))?;
                max_age = Some(n.min(MAX_AGE_LIMIT));
            }
            "mx" => {
                if v.is_empty() || v.contains(char::is_whitespace) {
                    return Err(format!("bad mx {}", log::quote(v, 80)));
                }
                mx.push(v.to_ascii_lowercase());
            }
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("no `version: STSv1`".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx".into());
    }
    Ok(Policy {
        mode,
        mx,
        max_age,
        id: id.to_string(),
        fetched,
    })
}

/// The body of an HTTP response: status 200 and a text/plain type required, a chunked body
/// decoded, a Content-Length checked (a cut connection is not a policy).
pub fn http_body(resp: &[u8]) -> Result<Vec<u8>, String> {
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of the response header")?;
    let head = String::from_utf8_lossy(&resp[..end]);
    let body = &resp[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(format!("HTTP status {}", log::quote(status, 80)));
    }
    let (mut ctype, mut length, mut chunked) = (None, None, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-type" => ctype = Some(v.to_ascii_lowercase()),
            "content-length" => length = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let media = ctype
        .as_deref()
        .and_then(|c| c.split(';').next())
        .map(str::trim);
    if media != Some("text/plain") {
        return Err(format!(
            "content type {} is not text/plain",
            ctype.as_deref().unwrap_or("(none)")
        ));
    }
    if chunked {
        return dechunk(body);
    }
    match length {
        Some(n) if body.len() < n => Err(format!("body cut at {} of {n} bytes", body.len())),
        Some(n) => Ok(body[..n].to_vec()),
        None => Ok(body.to_vec()),
    }
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("cut chunked body")?;
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        // The size is checked first: a huge one must not overflow the sums.
        if size > MAX_POLICY || b.len() < size + 2 || out.len() + size > MAX_POLICY {
            return Err("cut or oversized chunked body".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn cache_path(dir: &Path, domain: &str) -> PathBuf {
    dir.join(domain.to_ascii_lowercase())
}

fn read_cache(dir: &Path, domain: &str) -> Option<Policy> {
    let text = std::fs::read_to_string(cache_path(dir, domain)).ok()?;
    Policy::from_cache(&text)
}

/// Written to a temporary name and renamed: a reader sees the old policy or the new one.
fn write_cache(dir: &Path, domain: &str, p: &Policy) -> std::io::Result<()> {
    let path = cache_path(dir, domain);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, p.cache_text())?;
    std::fs::rename(&tmp, &path)
}

/// The TXT records of `_mta-sts.DOMAIN` (Err: the lookup failed, not "no record").
async fn txt(ctx: &Ctx, domain: &str) -> Result<Vec<String>, String> {
    txt_records(ctx, &format!("_mta-sts.{domain}")).await
}

/// The TXT records of `name` (Err: the lookup failed, not "no record").
pub async fn txt_records(ctx: &Ctx, name: &str) -> Result<Vec<String>, String> {
    use hickory_resolver::proto::rr::RData;
    let name = format!("{}.", name.trim_end_matches('.'));
    match ctx.dns.txt_lookup(name.as_str()).await {
        Ok(l) => Ok(l
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => {
                    let joined: Vec<u8> =
                        t.txt_data.iter().flat_map(|c| c.iter().copied()).collect();
                    Some(String::from_utf8_lossy(&joined).into_owned())
                }
                _ => None,
            })
            .collect()),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(e.to_string()),
    }
}

/// The policy that applies to mail for `domain` now (None: none applies), and whether it was
/// fetched now (else cached). `msgid` is for the log.
pub async fn lookup(ctx: &Ctx, msgid: &str, domain: &str) -> Option<Policy> {
    let now = date::now_secs();
    let dir = &ctx.sts_dir;
    let cached = read_cache(dir, domain).filter(|p| p.fresh(now));
    let id = match txt(ctx, domain).await {
        Ok(records) => txt_id(&records),
        Err(e) => {
            if cached.is_some() {
                log!("{msgid} {domain}: MTA-STS TXT lookup failed ({e}); using the cached policy");
            }
            return cached.filter(|p| p.mode != Mode::None);
        }
    };
    let Some(id) = id else {
        // The record was removed: the cached policy stands until it expires (§5.1).
        return cached.filter(|p| p.mode != Mode::None);
    };
    if let Some(p) = &cached
        && p.id == id
    {
        return cached.filter(|p| p.mode != Mode::None);
    }
    let key = domain.to_ascii_lowercase();
    if ctx
        .sts_failed
        .borrow()
        .get(&key)
        .is_some_and(|t| t.elapsed() < FETCH_RETRY)
    {
        return cached.filter(|p| p.mode != Mode::None);
    }
    let fetched = tokio::time::timeout(FETCH_LIMIT, fetch(ctx, domain)).await;
    if matches!(fetched, Ok(Ok(_))) {
        ctx.sts_failed.borrow_mut().remove(&key);
    } else {
        ctx.sts_failed
            .borrow_mut()
            .insert(key, std::time::Instant::now());
    }
    match fetched {
        Ok(Ok(body)) => match parse(&String::from_utf8_lossy(&body), &id, now) {
            Ok(p) => {
                log!(
                    "{msgid} {domain}: MTA-STS policy id={id} mode={} max_age={} mx={}",
                    p.mode.name(),
                    p.max_age,
                    p.mx.join(",")
                );
                if let Err(e) = write_cache(dir, domain, &p) {
                    log!(
                        "{domain}: cannot cache the MTA-STS policy in {}: {e}",
                        dir.display()
                    );
                }
                Some(p).filter(|p| p.mode != Mode::None)
            }
            Err(e) => fetch_failed(ctx, msgid, domain, &format!("bad policy: {e}"), cached),
        },
        Ok(Err(e)) => fetch_failed(ctx, msgid, domain, &e, cached),
        Err(_) => fetch_failed(
            ctx,
            msgid,
            domain,
            &format!("no answer within {}s", FETCH_LIMIT.as_secs()),
            cached,
        ),
    }
}

/// A policy that could not be had: logged, and counted for the domain's TLS report
/// (sts-policy-invalid or sts-policy-fetch-error, RFC 8460 §4.3.2.1).
fn fetch_failed(
    ctx: &Ctx,
    msgid: &str,
    domain: &str,
    why: &str,
    cached: Option<Policy>,
) -> Option<Policy> {
    let then = if cached.is_some() {
        "using the cached policy"
    } else {
        "no policy applies"
    };
    log!("{msgid} {domain}: cannot fetch the MTA-STS policy: {why}; {then}");
    let kind = if why.starts_with("bad policy") {
        "sts-policy-invalid"
    } else {
        "sts-policy-fetch-error"
    };
    let o = ferry_common::tlsrpt::Outcome::Failure {
        kind,
        mx: "",
        ip: "",
    };
    crate::tlsrpt::record(ctx, domain, &o);
    cached.filter(|p| p.mode != Mode::None)
}

/// GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt, trying each address of the host.
async fn fetch(ctx: &Ctx, domain: &str) -> Result<Vec<u8>, String> {
    let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
    let addrs = crate::route::addresses(&ctx.dns, &host)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut last = String::new();
    for ip in addrs {
        match get(ctx, &host, ip).await {
            Ok(b) => return Ok(b),
            Err(e) => last = format!("{host}[{ip}]:{}: {e}", ctx.cfg.mtastsport),
        }
    }
    Err(last)
}

async fn get(ctx: &Ctx, host: &str, ip: IpAddr) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(SocketAddr::new(ip, ctx.cfg.mtastsport))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("bad name: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&ctx.tls.verified));
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\nUser-Agent: ferry\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                if resp.len() > MAX_POLICY + MAX_HEADER {
                    return Err("the policy is larger than 64 KiB".into());
                }
            }
            // Many servers close without TLS close_notify; http_body checks the length.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("reading the response: {e}")),
        }
    }
    let body = http_body(&resp)?;
    if body.len() > MAX_POLICY {
        return Err("the policy is larger than 64 KiB".into());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(mx_matches("mx.example.net", "MX.example.net."));
        assert!(mx_matches("*.example.net", "mx1.example.net"));
        assert!(!mx_matches("*.example.net", "a.b.example.net"));
        assert!(!mx_matches("*.example.net", "example.net"));
        assert!(!mx_matches("mx.example.net", "mx.example.org"));
    }

    #[test]
    fn txt_records() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            txt_id(&r(&["v=STSv1; id=20261201T1"])).as_deref(),
            Some("20261201T1")
        );
        assert_eq!(
            txt_id(&r(&["v=spf1 -all", "v=STSv1;id=a1"])).as_deref(),
            Some("a1")
        );
        assert_eq!(txt_id(&r(&["v=STSv1; id=a", "v=STSv1; id=b"])), None);
        assert_eq!(txt_id(&r(&["v=STSv1; id=bad-id"])), None);
        assert_eq!(txt_id(&r(&["v=STSv1"])), None);
        assert_eq!(txt_id(&r(&[])), None);
    }

    #[test]
    fn policies() {
        let p = parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\nextension: x\r\n",
            "i1",
            100,
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
        assert!(p.allows("backup.example.net") && !p.allows("evil.example.org"));
        assert!(p.fresh(100 + 604_799) && !p.fresh(100 + 604_800));
        assert_eq!(Policy::from_cache(&p.cache_text()), Some(p));
        assert!(parse("mode: enforce\nmx: a\nmax_age: 1\n", "i", 0).is_err());
        assert!(parse("version: STSv1\nmode: enforce\nmax_age: 1\n", "i", 0).is_err());
        assert!(parse("version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n", "i", 0).is_err());
        assert!(parse("version: STSv1\nmode: none\nmax_age: 1\n", "i", 0).is_ok());
        let long = parse(
            "version: STSv1\nmode: testing\nmx: a\nmax_age: 99999999999\n",
            "i",
            0,
        );
        assert!(long.is_err(), "max_age of more than 10 digits");
        let capped = parse(
            "version: STSv1\nmode: testing\nmx: a\nmax_age: 9999999999\n",
            "i",
            0,
        );
        assert_eq!(capped.unwrap().max_age, MAX_AGE_LIMIT);
    }

    #[test]
    fn http_responses() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(http_body(ok).unwrap(), b"hello");
        let chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).unwrap(), b"hello");
        let huge = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nx\r\n";
        assert!(
            http_body(huge).is_err(),
            "a chunk size that overflows is refused"
        );
        let cut = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 50\r\n\r\nhello";
        assert!(http_body(cut).is_err());
        let moved =
            b"HTTP/1.1 301 Moved\r\nLocation: https://x/\r\nContent-Type: text/plain\r\n\r\n";
        assert!(http_body(moved).is_err(), "redirects are not followed");
        let html = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nx";
        assert!(http_body(html).is_err());
    }
}
