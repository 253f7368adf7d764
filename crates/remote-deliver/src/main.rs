//! remote-deliver — delivers mail to other servers over SMTP (runs as ferryr).
//!
//! Started by rspawn, one or more per send service, each serving many deliveries at once in
//! one current-thread tokio runtime (created after rspawn dropped privileges). Protocol:
//!
//! - fd 0, jobs: `D job msgid where sender domain rcpt...` (where `t`: queue/todo/ID, `m`:
//!   queue/mess/XX/ID; all recipients at one domain; sender `#@[]` goes out as `<>`).
//! - fd 1, results: `R job status text [status text]...`, one pair per recipient in order,
//!   status 0 delivered, 100 permanent failure, 111 temporary failure, text the server's reply
//!   or why it could not be reached; a delivery that passed DSN parameters on to a server
//!   offering DSN ends its text with `; DSN passed on)` (envelope::DSN_PASSED_ON: send then
//!   sends no `relayed` report).
//!
//! Routing (route.rs): smtproutes, else MX with hickory-resolver (resolvconf or
//! /etc/resolv.conf), implicit MX, null MX, remoteport. SMTP (client.rs, deliver.rs): EHLO or
//! HELO, STARTTLS (opportunistic; verified for tlsdestinations and for the MX hosts of a
//! domain whose MTA-STS policy enforces: sts.rs, policies cached in queue/sts; the TLS
//! outcomes counted in queue/tlsrpt and mailed once a period to the domain's TLS-RPT rua:
//! tlsrpt.rs), REQUIRETLS (only over verified TLS to a vouched-for MX offering it), PIPELINING,
//! SIZE, 8BITMIME,
//! SMTPUTF8 (kept from the envelope's `U` record; a message that needs it is not sent to a
//! server without it, 5.6.7), DSN (the envelope's RET, ENVID, NOTIFY, ORCPT to a server that
//! offers it), AUTH PLAIN/LOGIN to a smarthost with credentials in
//! control/smtpauth (read once at start; only after STARTTLS with a verified certificate:
//! smtpauth.rs), all recipients of the job in one transaction, the next MX on a
//! server failure, connections kept for the next job to the same server. A server that is this
//! host (myself.rs: `me`, or our address and smtplisten port) is a mail loop: 5.4.6. Every line
//! end goes out as CR LF (message.rs). Timeouts: timeoutconnect, timeoutremote, and at least
//! 10 minutes for the reply to the final dot. One log line per recipient and attempt on stderr. Exits when fd 0 closes
//! (after the running deliveries end, at most a minute).

mod client;
mod deliver;
mod message;
mod myself;
mod route;
mod smtpauth;
mod sts;
mod tls;
mod tlsrpt;

use deliver::{Ctx, Job};
use ferry_common::config::Config;
use ferry_common::id::MsgId;
use ferry_common::log;
use ferry_common::queue::Queue;
use ferry_common::record::{Reader, Record};
use ferry_common::root::Root;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

fn main() {
    log::init("remote-deliver");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log!("fatal: cannot start the runtime: {e}");
            std::process::exit(111);
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, run()) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            log!("fatal: {e}");
            std::process::exit(111);
        }
    }
}

async fn run() -> Result<(), String> {
    let root = Root::from_exe().map_err(|e| e.to_string())?;
    let cfg = Config::load(&root).map_err(|e| e.to_string())?;
    let dns = route::resolver(&cfg)?;
    let tls = tls::configs(cfg.tlsca.as_deref())?;
    let queue = Queue::new(&root);
    let myself = myself::Myself::new(&cfg.me, &cfg.smtplisten);
    let auth = smtpauth::load(&root)?;
    let ctx = Rc::new(Ctx {
        auth,
        cfg,
        dns,
        tls,
        myself,
        sts_dir: queue.dir().join("sts"),
        sts_failed: RefCell::new(HashMap::new()),
        tlsrpt_dir: queue.dir().join("tlsrpt"),
        root: root.clone(),
        pool: RefCell::new(HashMap::new()),
        tcpto: RefCell::new(HashMap::new()),
    });
    let input = ferry_sys::take_fd(0).ok_or("fd 0 is not open")?;
    let output = ferry_sys::take_fd(1).ok_or("fd 1 is not open")?;
    let mut rx = pipe::Receiver::from_owned_fd(input).map_err(|e| format!("fd 0: {e}"))?;
    let mut tx = pipe::Sender::from_owned_fd(output).map_err(|e| format!("fd 1: {e}"))?;
    let (results_tx, mut results_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::task::spawn_local(async move {
        while let Some(bytes) = results_rx.recv().await {
            if tx.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let reaper = {
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            // TLS reports of ended periods: looked for every minute (every period if shorter).
            let every = ctx.cfg.tlsrptperiod.clamp(2, 60) / 2;
            let mut ticks = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                ctx.reap_idle().await;
                ticks += 1;
                if ticks.is_multiple_of(every.max(1)) {
                    tlsrpt::send_finished(&ctx).await;
                }
            }
        })
    };
    let running = Rc::new(Cell::new(0usize));
    let mut reader = Reader::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rx
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading jobs: {e}"))?;
        if n == 0 {
            break;
        }
        reader.feed(&buf[..n]);
        while let Some(rec) = reader.next_record().map_err(|e| e.to_string())? {
            let job = match parse_job(&queue, &rec) {
                Ok(j) => j,
                Err(e) => {
                    log!("bad job record: {e}");
                    continue;
                }
            };
            let (ctx, results_tx, running) = (ctx.clone(), results_tx.clone(), running.clone());
            running.set(running.get() + 1);
            tokio::task::spawn_local(async move {
                let results = deliver::deliver(&ctx, &job).await;
                let mut r = Record::new(b'R').with_u64(job.id);
                for res in &results {
                    r.push(res.code().to_string());
                    r.push(res.text());
                }
                let _ = results_tx.send(r.encode());
                running.set(running.get() - 1);
            });
        }
    }
    // send closed the pipe: let the running deliveries end (a minute at most).
    let start = Instant::now();
    while running.get() > 0 && start.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reaper.abort();
    let idle: Vec<client::Client> = ctx
        .pool
        .borrow_mut()
        .drain()
        .flat_map(|(_, l)| l.into_iter().map(|(c, _)| c))
        .collect();
    for c in idle {
        c.quit().await;
    }
    drop(results_tx);
    let _ = writer.await;
    Ok(())
}

fn parse_job(queue: &Queue, r: &Record) -> std::io::Result<Job> {
    if r.kind != b'D' {
        return Err(std::io::Error::other(format!(
            "unknown record {:?}",
            r.kind as char
        )));
    }
    let id = MsgId::parse(r.str(1)?).ok_or_else(|| std::io::Error::other("bad message id"))?;
    let path = if r.bytes(2)? == b"t" {
        queue.todo(&id)
    } else {
        queue.mess(&id)
    };
    let mut rcpts = Vec::new();
    for i in 5..r.fields.len() {
        rcpts.push(r.str(i)?.to_string());
    }
    if rcpts.is_empty() {
        return Err(std::io::Error::other("job without recipients"));
    }
    Ok(Job {
        id: r.u64(0)?,
        msgid: id.to_string(),
        path,
        sender: r.str(3)?.to_string(),
        domain: r.str(4)?.to_lowercase(),
        rcpts,
    })
}
