//! smtpd — the ESMTP server of ferry, for port 25 and for submission.
//!
//! Usage: `smtpd [-submission | -smtps] [READY-FD]`, run by s6 from service/smtpd/run (and
//! service/submission/run, service/smtps/run) as root (or as a normal user in single-user
//! mode). READY-FD is s6's notification fd: it gets a newline once smtpd listens.
//! `smtpd -bs` (run by `sendmail -bs`) instead speaks SMTP on stdin/stdout as the caller and
//! queues each message with `queue` (crates/smtpd/src/stdio.rs). `smtpd -tlskeys` and
//! `smtpd -auth` are smtpd's own helpers (below), never run by hand.
//!
//! Modes (crates/smtpd/src/session.rs `Service`): without an option, port 25 (`smtplisten`),
//! no AUTH. `-submission` (RFC 6409, `submissionlisten`, default port 587): STARTTLS, then
//! AUTH PLAIN/LOGIN, both before MAIL; `-smtps` (RFC 8314, `smtpslisten`, 465): TLS from the
//! first byte, then AUTH. Both need control/tlscert (else exit 111) and check passwords with
//! their checker; authenticated sessions relay, may use only their own senders (policy.rs,
//! control/senders) as envelope sender and in From: (checked at the final dot, 553 5.7.1),
//! get ESMTPSA and `(authenticated as NAME)` in the Received line, and their
//! messages the fix-ups of headers.rs (Bcc removed). Failed AUTHs are delayed and throttled per
//! address and per name (`authfailures`; server.rs).
//!
//! Start: reads the control files, binds every address of its listen file (backlog 4096),
//! loads `tlscert`/`tlskey` if both exist (then STARTTLS is offered), raises its open-file
//! limit, starts the queue writer `qwriter` as ferryq on a socket pair, starts `smtpd -tlskeys`
//! (which stays root, to read the key pair again on HUP: crates/smtpd/src/tlskeys.rs) on another,
//! in the submission modes starts `smtpd -auth` as ferrya on a third (the password checker, the
//! only reader of control/passwords; protocol: crates/smtpd/src/auth.rs), and drops to ferryd.
//! Then it serves every session in one mio event loop (crates/smtpd/src/server.rs) and streams
//! each message, as it arrives, to qwriter (protocol: crates/common/src/writer.rs); a message
//! gets 250 only after qwriter has committed it durably.
//!
//! The SMTP dialogue is crates/smtpd/src/session.rs (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//! ENHANCEDSTATUSCODES, SMTPUTF8, CHUNKING, DSN, STARTTLS, REQUIRETLS (over TLS only); AUTH in
//! the submission modes, SASL
//! parsing in crates/smtp/src/sasl.rs); who may send what is policy.rs.
//! Control files: me, smtpgreeting, smtplisten, submissionlisten, smtpslisten, databytes,
//! maxrcpt, maxhops, timeoutsmtpd, concurrencyincoming, concurrencyperip, rcpthosts,
//! relayclients, locals, virtualdomains, aliases, badmailfrom, badrcptto, tlscert, tlskey,
//! senders, authfailures, submissionreceived (full/hide: the client in the Received line) (and passwords, read by the checker only). Signals: HUP reloads the control files
//! (all but the listen files and the open-file limit, which need a restart), has qwriter reload its
//! own (`R`), and loads the certificate the key helper read; TERM stops (idle sessions get 421, messages in flight finish).
//! Logs one line per session, per message, per AUTH and per refused sender or recipient on stderr. Exit 111 on a setup error or when the
//! queue writer or the checker dies: smtpd sees its socket close at once, answers a message in flight 451
//! 4.3.0 and every session 421, and exits (s6 restarts all). Sessions are bounded in memory
//! (backpressure on unread replies) and tarpitted past 10 errors (server.rs).

mod auth;
mod conn;
mod headers;
mod listen;
mod policy;
mod server;
mod session;
mod stdio;
mod tls;
mod tlskeys;

use ferry_common::config::Config;
use ferry_common::log;
use ferry_common::root::Root;
use ferry_common::users::{self, Mode};
use session::Service;
use std::process::{Command, Stdio};

fn main() {
    log::init("smtpd");
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            log!("fatal: {e}");
            std::process::exit(111);
        }
    }
}

/// The user a single-user install belongs to (the owner of its queue), else the caller.
fn single_user_owner(root: &Root) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(root.queue())
        .map(|m| m.uid())
        .unwrap_or_else(|_| ferry_sys::uids().0)
}

fn run() -> std::io::Result<i32> {
    let mut args = std::env::args().skip(1);
    let mut arg = args.next();
    let root = Root::from_exe()?;
    let cfg = Config::load(&root)
        .map_err(|e| std::io::Error::other(format!("{e} (ferryctl check lists every problem)")))?;
    if arg.as_deref() == Some("-tlskeys") {
        return Ok(tlskeys::serve(&root));
    }
    if arg.as_deref() == Some("-auth") {
        return Ok(auth::serve(&root, &cfg.checkpassword));
    }
    if arg.as_deref() == Some("-bs") {
        // Routing follows the install's mode, not the caller's uid: in a privilege-separated
        // install every user and virtual mailbox is a recipient, whoever injects.
        let only_uid = (Mode::of_root(&root) == Mode::SingleUser).then(|| single_user_owner(&root));
        let policy = policy::ConfigPolicy::new(cfg, root.mail(), only_uid);
        return stdio::run(&root, &policy);
    }
    let service = match arg.as_deref() {
        Some("-submission") => Service::Submission,
        Some("-smtps") => Service::Smtps,
        _ => Service::Smtp,
    };
    if service != Service::Smtp {
        arg = args.next();
    }
    let ready_fd = match arg.as_deref() {
        None => None,
        Some(a) => Some(a.parse::<i32>().map_err(|_| {
            std::io::Error::other(format!(
                "usage: smtpd [-submission | -smtps] [READY-FD] | smtpd -bs (not {a:?})"
            ))
        })?),
    };
    let addrs = match service {
        Service::Smtp => cfg.smtplisten.clone(),
        Service::Submission => cfg.submissionlisten.clone(),
        Service::Smtps => cfg.smtpslisten.clone(),
    };
    let mode = Mode::current();
    let mut listeners = Vec::new();
    for addr in &addrs {
        listeners.push(listen::bind_tcp(*addr)?);
    }
    let tls = match tlskeys::read_pair(&root)
        .and_then(|p| p.map(|(c, k)| tls::server_config(&c, &k)).transpose())
    {
        Ok(t) => t,
        Err(e) => {
            log!("{e}: STARTTLS is off until it is fixed");
            None
        }
    };
    if service.submission() && tls.is_none() {
        // AUTH only over TLS: without a certificate the service has nothing to offer.
        return Err(std::io::Error::other(format!(
            "{} needs a certificate: control/tlscert and control/tlskey (the service stays down until they exist)",
            if service == Service::Smtps {
                "smtpd -smtps"
            } else {
                "smtpd -submission"
            }
        )));
    }
    let nofile = ferry_sys::raise_nofile(cfg.concurrencyincoming * 2 + 256);
    if nofile < cfg.concurrencyincoming + 64 {
        log!(
            "open-file limit {nofile} is low for concurrencyincoming {}",
            cfg.concurrencyincoming
        );
    }
    // The verifier of received mail (port 25 only): started as root, runs as ferryv, on a
    // socket pair whose other end is qwriter's fd 3 (crates/authverify/src/main.rs).
    let mut verifier = None;
    let mut verifier_end = None;
    if service == Service::Smtp {
        let (q_end, v_end) = std::os::unix::net::UnixStream::pair()?;
        let mut vcmd = Command::new(root.bin("authverify"));
        vcmd.env_clear()
            .current_dir(root.path())
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(v_end)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if mode == Mode::Separated {
            ferry_sys::command_as(&mut vcmd, &mode.cred(users::VERIFY)?);
        }
        verifier = Some(
            vcmd.spawn()
                .map_err(|e| std::io::Error::other(format!("cannot start authverify: {e}")))?,
        );
        drop(vcmd);
        verifier_end = Some(q_end);
    }
    let (mine, theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut cmd = Command::new(root.bin("qwriter"));
    cmd.env_clear()
        .current_dir(root.path())
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if mode == Mode::Separated {
        ferry_sys::command_as(&mut cmd, &mode.cred(users::QUEUE)?);
    }
    if let Some(v) = &verifier_end {
        use std::os::fd::AsRawFd;
        ferry_sys::command_fds(&mut cmd, vec![(v.as_raw_fd(), 3)]);
    }
    let mut writer = cmd
        .spawn()
        .map_err(|e| std::io::Error::other(format!("cannot start qwriter: {e}")))?;
    // The Command holds qwriter's end of the socket: without this drop smtpd would keep it
    // open itself and never see the writer die.
    drop(cmd);
    drop(verifier_end);
    // The key helper stays as the user smtpd started as (root), to read the pair on HUP.
    let (keys_mine, keys_theirs) = std::os::unix::net::UnixStream::pair()?;
    let mut keys_cmd = Command::new(root.bin("smtpd"));
    keys_cmd
        .arg("-tlskeys")
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(keys_theirs)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut keys_helper = keys_cmd
        .spawn()
        .map_err(|e| std::io::Error::other(format!("cannot start smtpd -tlskeys: {e}")))?;
    drop(keys_cmd);
    let keeper = tlskeys::Keeper::new(keys_mine)?;
    // The password checker: started as root, runs as ferrya (the only reader of
    // control/passwords), on a socket pair (crates/smtpd/src/auth.rs).
    let mut checker_child = None;
    let checker = if service.submission() {
        let (auth_mine, auth_theirs) = std::os::unix::net::UnixStream::pair()?;
        let mut auth_cmd = Command::new(root.bin("smtpd"));
        auth_cmd
            .arg("-auth")
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(auth_theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if mode == Mode::Separated {
            ferry_sys::command_as(&mut auth_cmd, &mode.cred(users::AUTH)?);
        }
        checker_child = Some(
            auth_cmd
                .spawn()
                .map_err(|e| std::io::Error::other(format!("cannot start smtpd -auth: {e}")))?,
        );
        drop(auth_cmd);
        Some(auth::Checker::new(auth_mine)?)
    } else {
        None
    };
    if mode == Mode::Separated {
        ferry_sys::drop_privileges(&mode.cred(users::SMTPD)?)?;
    }
    let only_uid = (mode == Mode::SingleUser).then(|| ferry_sys::uids().0);
    let policy = policy::ConfigPolicy::new(cfg, root.mail(), only_uid);
    let listening: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let starttls = tls.is_some();
    let mut server =
        server::Server::new(root, policy, tls, keeper, listeners, mine, service, checker)?;
    let code = server.run(|| {
        let what = match service {
            Service::Smtp => "",
            Service::Submission => "submission: AUTH after STARTTLS; ",
            Service::Smtps => "smtps: implicit TLS, then AUTH; ",
        };
        log!(
            "listening on {} ({what}{}; STARTTLS {})",
            listening.join(", "),
            mode.describe(),
            if service == Service::Smtps {
                "n/a"
            } else if starttls {
                "on"
            } else {
                "off: no control/tlscert"
            }
        );
        if let Some(fd) = ready_fd {
            ferry_sys::notify_ready(fd);
        }
    });
    drop(server);
    let _ = writer.wait();
    if let Some(mut v) = verifier {
        let _ = v.wait();
    }
    let _ = keys_helper.wait();
    if let Some(mut c) = checker_child {
        let _ = c.wait();
    }
    code
}
