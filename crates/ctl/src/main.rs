//! ferryctl — the one tool to run ferry: start, stop, inspect, set up.
//!
//! Usage: `ferryctl COMMAND [ARGS]`; `ferryctl help` and `ferryctl COMMAND --help` explain each.
//! Works on the root it is installed in (the parent of its bin/ directory). Reads the queue
//! directly but never changes it: queue actions are requests to send over queue/ctl/send,
//! and so is send's reload (`R`: its verdict); smtpd's reload verdict (and the submission
//! services', also smtpd) is read from its log.
//! Exit codes: 0 success; 1 the command ran and found a problem (check FAIL, service down);
//! 2 bad usage; 111 a temporary failure (send not running, cannot read the queue).

mod check;
mod ctlsock;
mod dkim;
mod dns;
mod dnscheck;
mod init;
mod logcmd;
mod logverdict;
mod mailbox;
mod passwd;
mod queuecmd;
mod run;
mod s6;
mod setup;
mod spfcmd;
mod srscheck;
mod stat;
mod svccmd;
mod tls;
mod tlsreport;
mod users;

use anyhow::Result;
use ferry_common::queue::Queue;
use ferry_common::record::Record;
use ferry_common::root::Root;

struct Command {
    name: &'static str,
    usage: &'static str,
    /// One line for `ferryctl help`.
    summary: &'static str,
    /// The details for `ferryctl COMMAND --help`.
    help: &'static str,
    /// Left out of `ferryctl help` (still answers --help).
    hidden: bool,
}

const fn cmd(
    name: &'static str,
    usage: &'static str,
    summary: &'static str,
    help: &'static str,
) -> Command {
    Command {
        name,
        usage,
        summary,
        help,
        hidden: false,
    }
}

const COMMANDS: &[Command] = &[
    cmd(
        "start",
        "start",
        "start the services (and the s6 supervision tree if needed), wait until ready",
        "Starts the s6 supervision tree (s6-svscan on ROOT/service, detached, its output in ROOT/log/svscan.log) when it is not running, then brings send and smtpd up and waits until they are ready (s6-svc -wU, 20 s at most), then the submission services (submission, smtps) once they are configured: a certificate (control/tlscert, tlskey) and a password (ferryctl passwd NAME) or control/checkpassword; their down file is removed then (until then: not started, not configured, which is no failure). One line per service. Exit 1 if one does not come up (the last lines of its log are shown).",
    ),
    cmd(
        "stop",
        "stop [--all]",
        "stop the services; --all also stops the supervision tree",
        "Stops the submission services that run, smtpd, then send (s6-svc -wD); the supervision tree and the loggers keep running. --all then stops s6-svscan and the loggers too (s6-svscanctl -t). The queue is kept: the next start delivers what is in it.",
    ),
    cmd(
        "restart",
        "restart",
        "restart both services (a down one is started)",
        "Restarts send, smtpd and the submission services that are up or enabled and configured (s6-svc -wR; a service that is down is started) and shows the old and new pids. Exit 1 if one does not come back, or if the supervision tree is not running.",
    ),
    cmd(
        "reload",
        "reload",
        "re-read the control files and the certificate; show each service's verdict",
        "Makes both services re-read their settings and shows each one's verdict: send is asked over queue/ctl/send and answers reloaded or refused (why); smtpd gets HUP (it re-reads the control files and the TLS certificate) and its verdict is read back from ROOT/log/smtpd/current (5 s at most), and so do the submission services that run (from ROOT/log/submission/current, ROOT/log/smtps/current). A refused reload keeps the old settings. Exit 1 if a service is down, refused, reloaded only in part (e.g. the certificate could not be read), or its verdict could not be read (\"HUP sent, verdict unknown\").",
    ),
    cmd(
        "stat",
        "stat",
        "services, pids, uptimes, readiness, run mode and the queue on one screen",
        "Shows the run mode (privilege separation or single-user), the supervision tree, each service (up/down, pid, uptime, readiness, its logger; a submission service not configured yet as down (not configured: what is missing), which is no failure), where smtpd listens, and the queue: messages (held, deferred, new), recipients pending (local, remote), the oldest. Exit 1 if a service is down or not ready, 111 if the queue cannot be read.",
    ),
    cmd(
        "check",
        "check [--no-dns]",
        "check configuration, install, listening ports and DNS records",
        "One line per item, OK, WARN or FAIL, with the fix: every control file (errors with file and line, unknown names), the TLS pair and the certificate smtpd serves (the one on disk? days left), owners and modes of the install (the manifest), the owners of virtual mailboxes, smtpd answering 220 on each smtplisten address, the DKIM keys in control/dkim (each loads, belongs to the signer, readable by nobody else), and DNS (unless --no-dns): every smtproutes host, A/AAAA of me, MX, SPF (evaluated as a receiver would, for MAIL FROM postmaster@DOMAIN from me's addresses) and DMARC of each local domain, PTR of me's addresses, and for each DKIM key its record (OK: the key on disk; FAIL: another key; WARN: none published). Name servers: control/resolvconf, else /etc/resolv.conf. Exit 1 if anything FAILs.",
    ),
    cmd(
        "setup",
        "setup DOMAIN [--admin USER|ADDRESS] [--me HOST] [--ip ADDRESS] [--dry-run]",
        "first-run wizard: names, aliases, a TLS certificate, the DNS records to publish",
        "Writes me (the host's name when it is DOMAIN or inside it, else mail.DOMAIN; --me decides), defaultdomain (DOMAIN), locals and rcpthosts (DOMAIN and me; rcpthosts keeps the virtual domains), saying old → new for each file it replaces. Writes a self-signed certificate for me to control/tlscert and control/tlskey when neither exists. Adds the aliases postmaster, root, abuse and mailer-daemon → --admin (default: the invoking user; as root without --admin they stay with the mailbox mail/postmaster), never changing existing ones. Prints the DNS records to publish (A, MX, SPF, DMARC, PTR, and the DKIM record of each key in control/dkim, or how to make one) with this host's address (--ip gives it), and how to let mail clients in: the first user (ferryctl passwd NAME), then ferryctl start for the submission services (587, 465). --dry-run shows all this and writes nothing.",
    ),
    cmd(
        "log",
        "log [smtpd|send|submission|smtps] [-n LINES]",
        "follow the logs (both services, or one)",
        "Follows ROOT/log/SERVICE/current with tail -F (every service when none is named: send, smtpd, and submission and smtps when they are up or enabled), starting with the last LINES lines (20), with s6-log's ISO 8601 timestamps.",
    ),
    cmd(
        "queue",
        "queue [show ID | delete ID | hold ID | release ID]",
        "list the queue, or show, delete, hold or release a message",
        "Lists queued messages (id, age, size, sender, recipients, state; recipients and last error indented), or acts on one. delete removes it without a bounce; hold stops retries until release. The actions are carried out by send (exit 111 if it is not running, 1 if it refuses).",
    ),
    cmd(
        "flush",
        "flush",
        "retry every deferred message now",
        "Makes every pending recipient due now (send does it; exit 111 if send is not running).",
    ),
    cmd(
        "init",
        "init [--demo PORT]",
        "lay out this root: users, directories, owners, modes, service directories",
        "Lays out this root: the ferry users (as root), queue and control directories with their owners and modes, the s6 service directories. --demo PORT also writes the demo configuration of `make run` and a self-signed certificate for localhost (never overwrites).",
    ),
    cmd(
        "mailbox",
        "mailbox add NAME",
        "create a virtual mailbox mail/NAME with the right owner",
        "Creates ROOT/mail/NAME/ and its Maildir/ (tmp, new, cur), mode 0700, owned by the mailbox user (ferrym with privilege separation, the root's owner single-user), and says which addresses it receives (NAME@ each DOMAIN:mail/ of virtualdomains). A directory made by hand with another owner is never changed: the command fails with the chown to run (ferryctl check fails it too). Exit 1 then, 2 for a name that is no mailbox name.",
    ),
    cmd(
        "passwd",
        "passwd NAME | passwd --delete NAME | passwd --list",
        "set, delete or list the passwords of submission (SMTP AUTH)",
        "Sets the password of NAME in control/passwords (argon2id), read from stdin: its first line, or typed twice without echo on a terminal. NAME is a local user (then it may send as NAME and NAME-ext at each local domain) or a virtual mailbox address (itself and its +ext/-ext forms); control/senders adds more. The file is mode 0640 root:ferrya (with privilege separation): only smtpd's password checker reads it. Takes effect at once, no reload. --delete NAME removes it (exit 1 if it had none), --list prints the names.",
    ),
    cmd(
        "dkim",
        "dkim keygen DOMAIN [SELECTOR] [--ed25519] | dkim list",
        "make a DKIM signing key and print its DNS record; list the keys",
        "keygen writes a new signing key to control/dkim/DOMAIN/SELECTOR.key (RSA 2048, or Ed25519 with --ed25519), mode 0600, owned by the signer (ferryq with privilege separation), and prints the TXT record to publish at SELECTOR._domainkey.DOMAIN as a zone file line (strings of at most 255 bytes), with its name and value. SELECTOR defaults to the month: sYYYYMM for RSA, eYYYYMM for Ed25519. An existing key is never replaced (exit 1). ferry signs the domain's mail with every key there, so publish the record at once; ferryctl check compares the published record with the key. list prints one line per key: domain, selector, kind, file, record value; keys that do not load are named (exit 1). docs/AUTHENTICATION.md tells how to rotate keys.",
    ),
    cmd(
        "spf",
        "spf IP HELO SENDER",
        "evaluate SPF for a client address, HELO name and sender, as smtpd does",
        "Evaluates SPF (RFC 7208) for a client at IP that said HELO and MAIL FROM:<SENDER> (\"\" or <> for the null sender: then the HELO name is evaluated), through the name servers of control/resolvconf (else /etc/resolv.conf), and prints the result (pass, fail, softfail, neutral, none, temperror, permerror) on the first line, then the domain evaluated and why (for a fail the domain's exp= text). include:, redirect=, exists:, macros and the limits (10 DNS-querying terms, 2 void lookups) apply. Exit 0 whatever the result, 2 for bad arguments.",
    ),
    cmd(
        "tls",
        "tls report DOMAIN",
        "print this period's TLS report (RFC 8460) for mail to DOMAIN",
        "Prints, as the JSON of RFC 8460, what remote-deliver recorded of its TLS sessions to DOMAIN's MX hosts in the current period (control/tlsrptperiod, a day): the MTA-STS policy it applied, the sessions with a verified certificate, and the failures by result type, MX host and address. Only domains with an MTA-STS policy are recorded. At the period's end remote-deliver mails this report, gzipped, to the rua of _smtp._tls.DOMAIN (docs/SMTP.md).",
    ),
    Command {
        name: "tls-selfsigned",
        usage: "tls-selfsigned [NAME]",
        summary: "",
        help: "Writes a self-signed certificate for NAME (default: me) to control/tlscert and control/tlskey if neither exists.",
        hidden: true,
    },
];

/// An error that decides the exit code (1: a problem found, 2: bad usage). Any other error
/// exits 111 (temporary).
#[derive(Debug)]
pub struct Exit(pub i32, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

pub fn problem(msg: impl Into<String>) -> anyhow::Error {
    Exit(1, msg.into()).into()
}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    Exit(2, msg.into()).into()
}

/// `text` as lines of at most `width` columns (a longer word stays whole).
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut col = 0;
    for w in text.split_whitespace() {
        let n = w.chars().count();
        if col > 0 && col + 1 + n > width {
            out.push('\n');
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(w);
        col += n;
    }
    out
}

fn usage_text() -> String {
    let mut s = String::from("usage: ferryctl COMMAND [ARGS]\n\ncommands:\n");
    for c in COMMANDS.iter().filter(|c| !c.hidden) {
        s.push_str(&format!("  {:<8} {}\n", c.name, c.summary));
    }
    s.push_str("\nferryctl COMMAND --help gives the arguments and the details of one command.\n");
    s.push_str("Exit codes: 0 ok, 1 a problem was found (check FAIL, service down), 2 usage, 111 temporary failure.\n");
    s
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().map(String::as_str) else {
        eprint!("{}", usage_text());
        std::process::exit(2);
    };
    if matches!(cmd, "help" | "-h" | "--help") {
        match args
            .get(1)
            .and_then(|n| COMMANDS.iter().find(|c| c.name == n))
        {
            Some(c) => println!("usage: ferryctl {}\n\n{}", c.usage, wrap(c.help, 88)),
            None => print!("{}", usage_text()),
        }
        return;
    }
    let Some(c) = COMMANDS.iter().find(|c| c.name == cmd) else {
        eprintln!("ferryctl: unknown command {cmd:?}\n\n{}", usage_text());
        std::process::exit(2);
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: ferryctl {}\n\n{}", c.usage, wrap(c.help, 88));
        return;
    }
    let root = match Root::from_exe() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferryctl: {e}");
            std::process::exit(111);
        }
    };
    let code = match run(&root, c, &args[1..]) {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(2, m)) => {
                eprintln!("ferryctl {cmd}: {m}\nusage: ferryctl {}", c.usage);
                2
            }
            Some(Exit(code, m)) => {
                eprintln!("ferryctl {cmd}: {m}");
                *code
            }
            None => {
                eprintln!("ferryctl {cmd}: {e:#}");
                111
            }
        },
    };
    std::process::exit(code);
}

/// Splits ARGS into positional arguments and `--flag [VALUE]` options; unknown flags are
/// usage errors. `valued` lists the flags that take a value.
struct Args {
    pos: Vec<String>,
    opts: Vec<(String, Option<String>)>,
}

impl Args {
    fn parse(args: &[String], valued: &[&str], switches: &[&str]) -> Result<Args> {
        let mut a = Args {
            pos: Vec::new(),
            opts: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(x) = it.next() {
            if valued.contains(&x.as_str()) {
                let v = it
                    .next()
                    .ok_or_else(|| usage(format!("{x} needs a value")))?;
                a.opts.push((x.clone(), Some(v.clone())));
            } else if switches.contains(&x.as_str()) {
                a.opts.push((x.clone(), None));
            } else if x.starts_with('-') {
                return Err(usage(format!("unknown option {x}")));
            } else {
                a.pos.push(x.clone());
            }
        }
        Ok(a)
    }
    fn has(&self, flag: &str) -> bool {
        self.opts.iter().any(|(f, _)| f == flag)
    }
    fn value(&self, flag: &str) -> Option<String> {
        self.opts
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .and_then(|(_, v)| v.clone())
    }
    /// Exactly `max` positional arguments at most.
    fn at_most(&self, max: usize) -> Result<()> {
        if self.pos.len() > max {
            Err(usage(format!("unexpected argument {:?}", self.pos[max])))
        } else {
            Ok(())
        }
    }
}

fn print_lines(lines: Vec<String>, code: i32) -> Result<i32> {
    for l in lines {
        println!("{l}");
    }
    Ok(code)
}

fn run(root: &Root, c: &Command, args: &[String]) -> Result<i32> {
    let q = Queue::new(root);
    match c.name {
        "start" => {
            Args::parse(args, &[], &[])?.at_most(0)?;
            let (lines, code) = svccmd::start(root)?;
            print_lines(lines, code)
        }
        "stop" => {
            let a = Args::parse(args, &[], &["--all"])?;
            a.at_most(0)?;
            let (lines, code) = svccmd::stop(root, a.has("--all"))?;
            print_lines(lines, code)
        }
        "restart" | "reload" => {
            Args::parse(args, &[], &[])?.at_most(0)?;
            let (lines, code) = if c.name == "restart" {
                svccmd::restart(root)?
            } else {
                svccmd::reload(root)?
            };
            print_lines(lines, code)
        }
        "stat" => {
            Args::parse(args, &[], &[])?.at_most(0)?;
            let (text, code) = stat::run(root)?;
            print!("{text}");
            Ok(code)
        }
        "check" => {
            let a = Args::parse(args, &[], &["--no-dns"])?;
            a.at_most(0)?;
            let (text, code) = check::run(root, !a.has("--no-dns"))?;
            print!("{text}");
            Ok(code)
        }
        "setup" => {
            let a = Args::parse(args, &["--admin", "--me", "--ip"], &["--dry-run"])?;
            a.at_most(1)?;
            let domain = a
                .pos
                .first()
                .ok_or_else(|| usage("which domain? e.g. ferryctl setup example.org"))?
                .clone();
            let ip = match a.value("--ip") {
                Some(s) => Some(
                    s.parse()
                        .map_err(|_| usage(format!("--ip {s:?} is not an IP address")))?,
                ),
                None => None,
            };
            let opts = setup::Opts {
                domain,
                admin: a.value("--admin"),
                me: a.value("--me"),
                ip,
                dry_run: a.has("--dry-run"),
            };
            print_lines(setup::run(root, &opts)?, 0)
        }
        "log" => {
            let a = Args::parse(args, &["-n"], &[])?;
            a.at_most(1)?;
            let service = a.pos.first().map(String::as_str);
            if let Some(s) = service
                && !s6::ALL.contains(&s)
            {
                return Err(usage(format!(
                    "no service {s:?}: smtpd, send, submission or smtps"
                )));
            }
            let n = match a.value("-n") {
                Some(v) => v
                    .parse()
                    .map_err(|_| usage(format!("-n {v:?} is not a number")))?,
                None => 20,
            };
            logcmd::run(root, service, n)
        }
        "mailbox" => {
            let a = Args::parse(args, &[], &[])?;
            a.at_most(2)?;
            match a
                .pos
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["add", name] => {
                    let (lines, code) = mailbox::add(root, name)?;
                    print_lines(lines, code)
                }
                _ => Err(usage("expected: mailbox add NAME")),
            }
        }
        "passwd" => {
            let a = Args::parse(args, &[], &["--delete", "--list"])?;
            a.at_most(1)?;
            match (a.has("--list"), a.has("--delete"), a.pos.first()) {
                (true, false, None) => print_lines(passwd::list(root)?, 0),
                (false, true, Some(name)) => {
                    let (lines, code) = passwd::delete(root, name)?;
                    print_lines(lines, code)
                }
                (false, false, Some(name)) => print_lines(passwd::set(root, name)?, 0),
                _ => Err(usage(
                    "expected: passwd NAME, passwd --delete NAME or passwd --list",
                )),
            }
        }
        "dkim" => {
            let a = Args::parse(args, &[], &["--ed25519"])?;
            a.at_most(3)?;
            let pos: Vec<&str> = a.pos.iter().map(String::as_str).collect();
            match (pos.as_slice(), a.has("--ed25519")) {
                (["keygen", domain], ed) => print_lines(dkim::keygen(root, domain, None, ed)?, 0),
                (["keygen", domain, sel], ed) => {
                    print_lines(dkim::keygen(root, domain, Some(sel), ed)?, 0)
                }
                (["list"], false) => {
                    let (lines, code) = dkim::list(root);
                    print_lines(lines, code)
                }
                _ => Err(usage(
                    "expected: dkim keygen DOMAIN [SELECTOR] [--ed25519] or dkim list",
                )),
            }
        }
        "spf" => {
            let a = Args::parse(args, &[], &[])?;
            match a.pos.as_slice() {
                [ip, helo, sender] => print_lines(spfcmd::run(root, ip, helo, sender)?, 0),
                _ => Err(usage("expected: spf IP HELO SENDER")),
            }
        }
        "tls" => {
            let a = Args::parse(args, &[], &[])?;
            match a.pos.as_slice() {
                [what, domain] if what == "report" => {
                    print_lines(tlsreport::report(root, domain)?, 0)
                }
                _ => Err(usage("expected: tls report DOMAIN")),
            }
        }
        "tls-selfsigned" => {
            let a = Args::parse(args, &[], &[])?;
            a.at_most(1)?;
            let name = match a.pos.first() {
                Some(n) => n.clone(),
                None => ferry_common::config::Config::load(root)
                    .map(|c| c.me)
                    .map_err(|e| problem(format!("{e}")))?,
            };
            let line = match tls::ensure(root, &name, false)? {
                tls::Outcome::Written => {
                    format!("wrote control/tlscert and control/tlskey (self-signed for {name})")
                }
                tls::Outcome::Present => "control/tlscert and control/tlskey exist: kept".into(),
                tls::Outcome::Partial(why) => return Err(problem(why)),
                tls::Outcome::WouldWrite => String::new(),
            };
            print_lines(vec![line], 0)
        }
        _ => run_queue(root, &q, c, args),
    }
}

fn run_queue(root: &Root, q: &Queue, c: &Command, args: &[String]) -> Result<i32> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match (c.name, a.as_slice()) {
        ("init", []) => print_lines(init::run(root, None)?, 0),
        ("init", ["--demo", port]) => match port.parse::<u16>() {
            Ok(p) => print_lines(init::run(root, Some(p))?, 0),
            Err(_) => Err(usage(format!("--demo {port:?} is not a port"))),
        },
        ("queue", []) => {
            print!("{}", queuecmd::list(q)?);
            Ok(0)
        }
        ("queue", ["show", id]) => {
            print!("{}", queuecmd::show(q, id)?);
            Ok(0)
        }
        ("queue", [act @ ("delete" | "hold" | "release"), id]) => {
            let kind = match *act {
                "delete" => b'D',
                "hold" => b'H',
                _ => b'U',
            };
            println!("{}", queuecmd::action(q, kind, id)?);
            Ok(0)
        }
        ("flush", []) => {
            println!("{}", ctlsock::request(q, Record::new(b'F'))?);
            Ok(0)
        }
        _ => Err(usage("bad arguments")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_is_wrapped_and_every_command_has_a_summary() {
        assert_eq!(wrap("aa bb cc", 5), "aa bb\ncc");
        for c in COMMANDS {
            assert!(
                wrap(c.help, 88)
                    .lines()
                    .all(|l| l.chars().count() <= 88 || !l.contains(' '))
            );
            assert!(
                c.hidden || (!c.summary.is_empty() && c.summary.len() <= 80),
                "{}",
                c.name
            );
        }
    }
}
