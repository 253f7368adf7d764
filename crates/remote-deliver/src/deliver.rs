//! One job: a message and its recipients at one domain. Route, then try the servers in
//! order until one takes the transaction; report a result per recipient.
//!
//! - A server that cannot be reached, greets with an error, refuses EHLO/HELO or MAIL with a
//!   4xx, requires TLS we cannot do, or drops the connection before DATA: the next address,
//!   then the next MX.
//! - MAIL refused with 5xx: every recipient fails permanently. RCPT replies decide each
//!   recipient. DATA and the final dot decide for the recipients that were accepted.
//! - A connection lost after DATA began: temporary failure (not the next MX: the first server
//!   may have the message; retrying later is safer than sending two copies now).
//! - All recipients of the job go in one transaction (unlike qmail), with PIPELINING when offered.
//! - Connections are kept for the next job to the same server for a few seconds.
//! - A server address that timed out is skipped for a while when there are others (qmail's
//!   tcpto), so that messages do not each wait for it.

use crate::client::{Client, Failure, TlsPolicy, reply_text};
use crate::message::Message;
use crate::myself::Myself;
use crate::route::{self, Host, RouteError};
use crate::tls::TlsConfigs;
use ferry_common::config::Config;
use ferry_common::envelope::DOUBLE_BOUNCE_SENDER;
use ferry_common::log;
use ferry_common::tlsrpt::Outcome;
use hickory_resolver::TokioResolver;
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct Job {
    pub id: u64,
    pub msgid: String,
    pub path: PathBuf,
    pub sender: String,
    pub domain: String,
    pub rcpts: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Res {
    Delivered(String),
    Permanent(String),
    Temporary(String),
}

impl Res {
    pub fn code(&self) -> i32 {
        match self {
            Res::Delivered(_) => 0,
            Res::Permanent(_) => 100,
            Res::Temporary(_) => 111,
        }
    }
    pub fn text(&self) -> &str {
        match self {
            Res::Delivered(t) | Res::Permanent(t) | Res::Temporary(t) => t,
        }
    }
}

/// Idle connections are closed after this long.
pub const IDLE: Duration = Duration::from_secs(10);
/// The shortest wait for the reply after the final dot (RFC 5321 §4.5.3.2.6).
pub const FINAL_DOT_WAIT: Duration = Duration::from_secs(600);
/// How often one connection is used before it is closed anyway.
const MAX_USES: u32 = 100;

/// A kept connection is for one server address and port, and one TLS policy (required or not).
pub type PoolKey = (IpAddr, u16, bool);

pub struct Ctx {
    pub cfg: Config,
    /// Smarthost credentials (control/smtpauth, crate::smtpauth).
    pub auth: crate::smtpauth::Table,
    pub dns: TokioResolver,
    pub tls: TlsConfigs,
    pub myself: Myself,
    /// queue/sts: the cached MTA-STS policies (crate::sts).
    pub sts_dir: std::path::PathBuf,
    /// Domains whose policy fetch failed, and when (crate::sts::FETCH_RETRY).
    pub sts_failed: RefCell<HashMap<String, Instant>>,
    /// queue/tlsrpt: the TLS outcomes for the reports (crate::tlsrpt).
    pub tlsrpt_dir: std::path::PathBuf,
    pub root: ferry_common::root::Root,
    pub pool: RefCell<HashMap<PoolKey, Vec<(Client, Instant)>>>,
    /// Addresses that timed out: skip until then (if there is another address).
    pub tcpto: RefCell<HashMap<IpAddr, (u32, Instant)>>,
}

enum Attempt {
    Done(Vec<Res>),
    /// This server could not take it: try the next.
    Next(String),
}

impl Ctx {
    fn timeouts(&self) -> (Duration, Duration) {
        (
            Duration::from_secs(self.cfg.timeoutconnect),
            Duration::from_secs(self.cfg.timeoutremote),
        )
    }

    fn skip(&self, ip: IpAddr) -> bool {
        self.tcpto
            .borrow()
            .get(&ip)
            .is_some_and(|(_, until)| Instant::now() < *until)
    }

    fn timed_out(&self, ip: IpAddr) {
        let mut t = self.tcpto.borrow_mut();
        let e = t.entry(ip).or_insert((0, Instant::now()));
        e.0 = (e.0 + 1).min(6);
        e.1 = Instant::now() + Duration::from_secs(60 << e.0.saturating_sub(1));
    }

    fn reachable(&self, ip: IpAddr) {
        self.tcpto.borrow_mut().remove(&ip);
    }

    /// Closes idle connections past their time.
    pub async fn reap_idle(&self) {
        let old: Vec<Client> = {
            let mut pool = self.pool.borrow_mut();
            let mut old = Vec::new();
            for list in pool.values_mut() {
                let (keep, go): (Vec<_>, Vec<_>) =
                    list.drain(..).partition(|(_, t)| t.elapsed() < IDLE);
                *list = keep;
                old.extend(go.into_iter().map(|(c, _)| c));
            }
            pool.retain(|_, l| !l.is_empty());
            old
        };
        for c in old {
            c.quit().await;
        }
    }
}

pub async fn deliver(ctx: &Ctx, job: &Job) -> Vec<Res> {
    let all = |r: Res| vec![r; job.rcpts.len()];
    let msg = match Message::open(&job.path) {
        Ok(m) => m,
        Err(e) => return all(Res::Temporary(format!("cannot read the message: {e}"))),
    };
    let hosts = match route::route(&ctx.cfg, &ctx.dns, &ctx.myself, &job.domain).await {
        Ok(h) => h,
        Err(RouteError::Permanent(t)) => return log_all(job, "-", all(Res::Permanent(t))),
        Err(RouteError::Temporary(t)) => return log_all(job, "-", all(Res::Temporary(t))),
    };
    let (hosts, sts, reported) = match apply_sts(ctx, job, &msg, hosts).await {
        Ok(h) => h,
        Err(r) => return log_all(job, "-", all(r)),
    };
    let required = sts || ctx.cfg.tlsdestinations.contains(&job.domain);
    let candidates: Vec<(&Host, IpAddr)> = hosts
        .iter()
        .flat_map(|h| h.addrs.iter().map(move |a| (h, *a)))
        .collect();
    let usable: Vec<(&Host, IpAddr)> = candidates
        .iter()
        .copied()
        .filter(|(_, ip)| !ctx.skip(*ip))
        .collect();
    if usable.is_empty() {
        return log_all(
            job,
            "-",
            all(Res::Temporary(format!(
                "4.4.1 every server of {} timed out recently; trying later",
                job.domain
            ))),
        );
    }
    let mut last = String::new();
    for (host, ip) in usable {
        // A host with credentials gets them only over verified TLS.
        let required =
            required || (host.routed && ctx.auth.contains_key(&host.name.to_lowercase()));
        match attempt(ctx, job, &msg, host, ip, required).await {
            Attempt::Done(results) => {
                // A session with a verified certificate, whatever the server said then.
                if reported && required {
                    crate::tlsrpt::record(ctx, &job.domain, &Outcome::Success { mx: &host.name });
                }
                return results;
            }
            Attempt::Next(why) => {
                if reported && let Some(kind) = crate::tlsrpt::failure_kind(&why) {
                    let ip = ip.to_string();
                    let o = Outcome::Failure {
                        kind,
                        mx: &host.name,
                        ip: &ip,
                    };
                    crate::tlsrpt::record(ctx, &job.domain, &o);
                }
                log!(
                    "{} {}: {}[{}]:{}: {why}",
                    job.msgid,
                    job.domain,
                    host.name,
                    ip,
                    host.port
                );
                last = why;
            }
        }
    }
    // No server of a REQUIRETLS message offers REQUIRETLS: that will not change by waiting.
    let result = if last.starts_with(REQUIRETLS_UNMET) {
        Res::Permanent(last)
    } else {
        Res::Temporary(last)
    };
    log_all(job, "-", all(result))
}

/// The status of a REQUIRETLS message that cannot be sent as it asks (RFC 8689 §5).
const REQUIRETLS_UNMET: &str = "5.7.30";

/// The MX hosts an MTA-STS policy of the job's domain lets take its mail (crate::sts),
/// whether TLS with a verified certificate is required of them (mode enforce, or a
/// REQUIRETLS message), and whether the outcomes go into the domain's TLS report (a policy
/// applies: crate::tlsrpt; an MX it does not list is recorded as a validation-failure). No policy is looked up for smtproutes or an address literal: the
/// administrator's route counts as secure for REQUIRETLS. A REQUIRETLS message to MX hosts
/// that no policy vouches for (in enforce or testing mode) fails for good, 5.7.30 (RFC 8689
/// §4.2.1; DNSSEC, the other way to vouch for them, is not built); a message with
/// `TLS-Required: No` ignores the policy.
async fn apply_sts(
    ctx: &Ctx,
    job: &Job,
    msg: &Message,
    hosts: Vec<Host>,
) -> Result<(Vec<Host>, bool, bool), Res> {
    let requiretls = msg.env.requiretls;
    if job.domain.starts_with('[') || hosts.iter().any(|h| h.routed) {
        return Ok((hosts, requiretls, false));
    }
    let Some(policy) = crate::sts::lookup(ctx, &job.msgid, &job.domain).await else {
        if requiretls {
            return Err(Res::Permanent(format!(
                "{REQUIRETLS_UNMET} REQUIRETLS, and no MTA-STS policy of {} vouches for its MX hosts",
                job.domain
            )));
        }
        return Ok((hosts, false, false));
    };
    for h in hosts.iter().filter(|h| !policy.allows(&h.name)) {
        let o = Outcome::Failure {
            kind: "validation-failure",
            mx: &h.name,
            ip: "",
        };
        crate::tlsrpt::record(ctx, &job.domain, &o);
    }
    if requiretls {
        let allowed: Vec<Host> = hosts
            .into_iter()
            .filter(|h| policy.allows(&h.name))
            .collect();
        if allowed.is_empty() {
            return Err(Res::Permanent(format!(
                "{REQUIRETLS_UNMET} REQUIRETLS, and no MX host of {} matches its MTA-STS policy (mx: {})",
                job.domain,
                policy.mx.join(", ")
            )));
        }
        return Ok((allowed, true, true));
    }
    if msg.tls_optional() {
        log!(
            "{} {}: TLS-Required: No; its MTA-STS policy ({}) is not applied",
            job.msgid,
            job.domain,
            policy.mode.name()
        );
        return Ok((hosts, false, false));
    }
    let refused: Vec<&str> = hosts
        .iter()
        .filter(|h| !policy.allows(&h.name))
        .map(|h| h.name.as_str())
        .collect();
    let refused = refused.join(", ");
    match policy.mode {
        crate::sts::Mode::Enforce => {
            if !refused.is_empty() {
                log!(
                    "{} {}: MTA-STS policy (enforce) skips MX {refused}",
                    job.msgid,
                    job.domain
                );
            }
            let allowed: Vec<Host> = hosts
                .into_iter()
                .filter(|h| policy.allows(&h.name))
                .collect();
            if allowed.is_empty() {
                return Err(Res::Temporary(format!(
                    "4.7.5 no MX host of {} matches its MTA-STS policy (mx: {})",
                    job.domain,
                    policy.mx.join(", ")
                )));
            }
            Ok((allowed, true, true))
        }
        _ => {
            if !refused.is_empty() {
                log!(
                    "{} {}: MTA-STS policy (testing) would skip MX {refused}; delivering as usual",
                    job.msgid,
                    job.domain
                );
            }
            Ok((hosts, false, true))
        }
    }
}

fn log_all(job: &Job, relay: &str, results: Vec<Res>) -> Vec<Res> {
    log_results(job, relay, "-", 0, &results);
    results
}

/// One line per recipient: relay, TLS, `conn_use` (this transaction's number on its
/// connection, as Postfix logs it: above 1 means a kept connection was reused), the result.
fn log_results(job: &Job, relay: &str, tls: &str, conn_use: u32, results: &[Res]) {
    for (r, res) in job.rcpts.iter().zip(results) {
        let word = match res {
            Res::Delivered(_) => "delivered",
            Res::Permanent(_) => "failed",
            Res::Temporary(_) => "deferred",
        };
        log!(
            "{} to=<{r}> relay={relay} tls={tls} conn_use={conn_use} result={word} reply={}",
            job.msgid,
            res.text()
        );
    }
}

/// "TLSv1.3 TLS13_... verified=no", or "-" for plaintext.
fn tls_word(c: &Client) -> String {
    match &c.tls {
        Some(t) => format!("{t} verified={}", if c.verified { "yes" } else { "no" }),
        None => "-".to_string(),
    }
}

/// A connection to this server: an idle one from the pool, or a new one (with STARTTLS as the
/// policy says; a failed opportunistic handshake is retried in plaintext).
async fn connect(
    ctx: &Ctx,
    host: &Host,
    ip: IpAddr,
    required: bool,
    use_pool: bool,
) -> Result<(Client, bool), String> {
    let key = (ip, host.port, required);
    if use_pool && let Some((c, _)) = ctx.pool.borrow_mut().get_mut(&key).and_then(|l| l.pop()) {
        return Ok((c, true));
    }
    let (ct, t) = ctx.timeouts();
    let addr = SocketAddr::new(ip, host.port);
    let mut policy = if required {
        TlsPolicy::Required
    } else {
        TlsPolicy::Opportunistic
    };
    loop {
        let mut c = match Client::connect(addr, &host.name, ct, t).await {
            Ok(c) => c,
            Err(Failure::Io(e)) => {
                if e.contains("timed out") {
                    ctx.timed_out(ip);
                }
                return Err(e);
            }
            Err(Failure::Reply(r)) => return Err(format!("greeting: {}", reply_text(&r))),
        };
        ctx.reachable(ip);
        c.hello(&ctx.cfg.helohost)
            .await
            .map_err(|f| format!("EHLO: {}", f.text()))?;
        match policy {
            TlsPolicy::Never => return Ok((c, false)),
            TlsPolicy::Required if !c.ext.starttls => {
                c.quit().await;
                return Err(format!(
                    "4.7.4 {} does not offer STARTTLS, and TLS is required for it (MTA-STS, tlsdestinations or smtpauth)",
                    host.name
                ));
            }
            TlsPolicy::Opportunistic if !c.ext.starttls => return Ok((c, false)),
            _ => {}
        }
        match c.starttls(&ctx.tls, required, &ctx.cfg.helohost).await {
            Ok(mut c) => {
                if let Some(cred) = ctx
                    .auth
                    .get(&host.name.to_lowercase())
                    .filter(|_| host.routed)
                    && let Err(f) = c.authenticate(&cred.user, &cred.password).await
                {
                    c.quit().await;
                    return Err(format!("4.7.0 AUTH as {} failed: {}", cred.user, f.text()));
                }
                return Ok((c, false));
            }
            Err(f) if required => {
                return Err(format!("4.7.5 TLS required and failed: {}", f.text()));
            }
            Err(f) => {
                log!(
                    "{}[{ip}]: {}; trying again without TLS",
                    host.name,
                    f.text()
                );
                policy = TlsPolicy::Never;
            }
        }
    }
}

async fn attempt(
    ctx: &Ctx,
    job: &Job,
    msg: &Message,
    host: &Host,
    ip: IpAddr,
    required: bool,
) -> Attempt {
    // A kept connection may have been closed by the server meanwhile: then the other kept
    // ones to it are likely dead too; they go, and a fresh connection takes the job.
    for round in 0..2 {
        let (mut c, reused) = match connect(ctx, host, ip, required, round == 0).await {
            Ok(c) => c,
            Err(e) => return Attempt::Next(e),
        };
        match transaction(&mut c, job, msg).await {
            Tx::Done(results) => {
                let relay = c.relay();
                log_results(job, &relay, &tls_word(&c), c.used + 1, &results);
                c.used += 1;
                if c.used < MAX_USES {
                    ctx.pool
                        .borrow_mut()
                        .entry((ip, host.port, required))
                        .or_default()
                        .push((c, Instant::now()));
                } else {
                    c.quit().await;
                }
                return Attempt::Done(results);
            }
            Tx::Broken(results) => {
                log_results(job, &c.relay(), &tls_word(&c), c.used + 1, &results);
                return Attempt::Done(results);
            }
            Tx::Next(why) if reused => {
                log!(
                    "{} {}: a kept connection to {} failed ({why}); opening a new one",
                    job.msgid,
                    job.domain,
                    c.relay()
                );
                ctx.pool.borrow_mut().remove(&(ip, host.port, required));
            }
            Tx::Next(why) => {
                c.quit().await;
                return Attempt::Next(why);
            }
        }
    }
    Attempt::Next("the server keeps closing the connection".into())
}

enum Tx {
    Done(Vec<Res>),
    /// The connection broke after DATA began: results decided, the connection is useless.
    Broken(Vec<Res>),
    /// Nothing was decided: try the next server.
    Next(String),
}

fn is_ascii_envelope(job: &Job) -> bool {
    job.sender.is_ascii() && job.rcpts.iter().all(|r| r.is_ascii())
}

async fn transaction(c: &mut Client, job: &Job, msg: &Message) -> Tx {
    let n = job.rcpts.len();
    let host = c.host.clone();
    // "550 5.1.1 text (mx.example.org after RCPT TO)": the reply first, so that bounces carry
    // it as an smtp Diagnostic-Code.
    let said = |r: &ferry_smtp::ParsedReply, step: &str| {
        format!("{} ({host} after {step})", reply_text(r))
    };
    if let Some(max) = c.ext.size
        && max > 0
        && msg.len > max
    {
        return Tx::Done(vec![
            Res::Permanent(format!(
                "5.3.4 message of {} bytes is larger than {} accepts ({max})",
                msg.len, c.host
            ));
            n
        ]);
    }
    if msg.eightbit && !c.ext.eightbitmime {
        return Tx::Done(vec![
            Res::Permanent(format!(
                "5.6.3 8-bit message, and {} does not offer 8BITMIME (RFC 6152)",
                c.host
            ));
            n
        ]);
    }
    // RFC 6531 §3.2: a message that needs SMTPUTF8 (an internationalised address, or UTF-8
    // headers in a message received with SMTPUTF8) is not sent to a server without it.
    let needs_utf8 = !is_ascii_envelope(job) || msg.needs_smtputf8();
    if needs_utf8 && !c.ext.smtputf8 {
        let what = if is_ascii_envelope(job) {
            "UTF-8 headers"
        } else {
            "internationalised address"
        };
        return Tx::Done(vec![
            Res::Permanent(format!(
                "5.6.7 {what}, and {} does not offer SMTPUTF8 (RFC 6531)",
                c.host
            ));
            n
        ]);
    }
    // RFC 8689 §4.2.1: a REQUIRETLS message goes only to a server that offers REQUIRETLS.
    if msg.env.requiretls && !c.ext.requiretls {
        return Tx::Next(format!(
            "{REQUIRETLS_UNMET} REQUIRETLS, and {} does not offer REQUIRETLS",
            c.host
        ));
    }
    let utf8 = needs_utf8 || (msg.smtputf8 && c.ext.smtputf8);
    let sender = if job.sender == DOUBLE_BOUNCE_SENDER {
        ""
    } else {
        job.sender.as_str()
    };
    let mut mail = format!("MAIL FROM:<{sender}>");
    if c.ext.size.is_some() {
        mail.push_str(&format!(" SIZE={}", msg.len));
    }
    if msg.eightbit {
        mail.push_str(" BODY=8BITMIME");
    }
    if msg.env.requiretls {
        mail.push_str(" REQUIRETLS");
    }
    if utf8 {
        mail.push_str(" SMTPUTF8");
    }
    // DSN (RFC 3461 §5.2): to a server that offers it, the parameters go on with the message
    // (each recipient's own, found by its address in the envelope), and it reports from then on.
    let dsn = c.ext.dsn && msg.env.dsn != ferry_common::envelope::Dsn::default();
    if dsn {
        mail.push_str(&msg.env.dsn.mail_params());
    }
    let mut cmds = vec![mail];
    // Each recipient's index in the envelope, looked up once (an envelope may hold 100,000).
    let index: std::collections::HashMap<&str, usize> = if dsn {
        msg.env
            .recipients
            .iter()
            .enumerate()
            .map(|(i, e)| (e.as_str(), i))
            .collect()
    } else {
        Default::default()
    };
    cmds.extend(job.rcpts.iter().map(|r| {
        let params = index
            .get(r.as_str())
            .map(|&i| msg.env.dsn.rcpt(i).rcpt_params())
            .unwrap_or_default();
        format!("RCPT TO:<{r}>{params}")
    }));
    cmds.push("DATA".into());
    // With PIPELINING everything goes at once; otherwise one command at a time.
    let mut replies = Vec::with_capacity(cmds.len());
    if c.ext.pipelining {
        let all: String = cmds.iter().map(|l| format!("{l}\r\n")).collect();
        if let Err(f) = c.send(all.as_bytes()).await {
            return Tx::Next(f.text());
        }
        if let Err(f) = c.flush().await {
            return Tx::Next(f.text());
        }
        for _ in 0..cmds.len() {
            match c.reply().await {
                Ok(r) => replies.push(r),
                Err(f) => return Tx::Next(f.text()),
            }
        }
    } else {
        for (i, l) in cmds.iter().enumerate() {
            let is_data = i == cmds.len() - 1;
            if is_data
                && !replies
                    .iter()
                    .skip(1)
                    .any(|r: &ferry_smtp::ParsedReply| r.code / 100 == 2)
            {
                break;
            }
            match c.command(l).await {
                Ok(r) => {
                    let stop = i == 0 && r.code / 100 != 2;
                    replies.push(r);
                    if stop {
                        break;
                    }
                }
                Err(f) => return Tx::Next(f.text()),
            }
        }
    }
    let mail_r = &replies[0];
    if mail_r.code / 100 != 2 {
        // A server that answered 354 to the pipelined DATA anyway gets an empty message ended.
        if replies.get(1 + n).is_some_and(|r| r.code == 354) {
            let _ = c.send(b".\r\n").await;
            let _ = c.flush().await;
            let _ = c.reply().await;
        }
        let _ = c.command("RSET").await;
        let text = said(mail_r, "MAIL FROM");
        return if mail_r.code / 100 == 4 {
            Tx::Next(text)
        } else {
            Tx::Done(vec![Res::Permanent(text); n])
        };
    }
    let mut results: Vec<Option<Res>> = (0..n)
        .map(|i| match replies.get(1 + i) {
            Some(r) if r.code / 100 == 2 => None,
            Some(r) if r.code / 100 == 4 => Some(Res::Temporary(said(r, "RCPT TO"))),
            Some(r) => Some(Res::Permanent(said(r, "RCPT TO"))),
            None => Some(Res::Temporary("no reply to RCPT TO".into())),
        })
        .collect();
    let accepted = results.iter().filter(|r| r.is_none()).count();
    let data_r = replies.get(1 + n);
    if accepted == 0 {
        if data_r.is_some_and(|r| r.code == 354) {
            // A pipelined DATA was accepted although no recipient was: end it empty.
            let _ = c.send(b".\r\n").await;
            let _ = c.flush().await;
            let _ = c.reply().await;
        }
        let _ = c.command("RSET").await;
        return Tx::Done(
            results
                .into_iter()
                .map(|r| r.unwrap_or(Res::Temporary("?".into())))
                .collect(),
        );
    }
    let fill = |results: &mut Vec<Option<Res>>, r: Res| {
        for x in results.iter_mut() {
            if x.is_none() {
                *x = Some(r.clone());
            }
        }
    };
    match data_r {
        Some(r) if r.code == 354 => {}
        Some(r) => {
            let t = said(r, "DATA");
            fill(
                &mut results,
                if r.code / 100 == 4 {
                    Res::Temporary(t)
                } else {
                    Res::Permanent(t)
                },
            );
            let _ = c.command("RSET").await;
            return Tx::Done(results.into_iter().flatten().collect());
        }
        None => return Tx::Next("no reply to DATA".into()),
    }
    let mut wire = msg.wire();
    loop {
        match wire.next_chunk() {
            Ok(Some(chunk)) => {
                if let Err(f) = c.send(&chunk).await {
                    fill(
                        &mut results,
                        Res::Temporary(format!(
                            "connection lost while sending the message: {}",
                            f.text()
                        )),
                    );
                    return Tx::Broken(results.into_iter().flatten().collect());
                }
            }
            Ok(None) => break,
            Err(e) => {
                fill(
                    &mut results,
                    Res::Temporary(format!("cannot read the message: {e}")),
                );
                return Tx::Broken(results.into_iter().flatten().collect());
            }
        }
    }
    // RFC 5321 §4.5.3.2.6: wait 10 minutes for the reply to the final dot (the server may be
    // scanning the message); giving up earlier makes duplicates.
    let end = match c.flush().await {
        Ok(()) => c.reply_within(c.timeout.max(FINAL_DOT_WAIT)).await,
        Err(f) => Err(f),
    };
    match end {
        Ok(r) if r.code / 100 == 2 => {
            let text = if dsn {
                format!(
                    "{} ({host} after the message{}",
                    reply_text(&r),
                    ferry_common::envelope::DSN_PASSED_ON
                )
            } else {
                said(&r, "the message")
            };
            fill(&mut results, Res::Delivered(text));
            Tx::Done(results.into_iter().flatten().collect())
        }
        Ok(r) => {
            let t = said(&r, "the message");
            fill(
                &mut results,
                if r.code / 100 == 4 {
                    Res::Temporary(t)
                } else {
                    Res::Permanent(t)
                },
            );
            Tx::Done(results.into_iter().flatten().collect())
        }
        Err(f) => {
            fill(
                &mut results,
                Res::Temporary(format!("after the message: {}", f.text())),
            );
            Tx::Broken(results.into_iter().flatten().collect())
        }
    }
}
