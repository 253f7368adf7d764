//! `ferryctl stat`: one screen on the state of the install, like `qmailctl stat` with
//! `qmail-qstat`: the run mode, the supervision tree, each service (up/down, pid, uptime,
//! readiness, its logger; a submission service that is not configured or not enabled yet
//! as `down (not configured: ...)`, which is not a failure), where smtpd listens, and the
//! queue in numbers.

use crate::queuecmd::{self, Entry};
use crate::s6;
use anyhow::Result;
use ferry_common::config::Config;
use ferry_common::info::{Channel, State};
use ferry_common::queue::Queue;
use ferry_common::root::Root;
use ferry_common::users::Mode;
use std::fmt::Write;

/// The queue in numbers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub messages: usize,
    pub held: usize,
    pub deferred: usize,
    /// Committed, not yet taken by send.
    pub new: usize,
    pub local: usize,
    pub remote: usize,
    /// Recipients of new messages (not yet sorted into local and remote).
    pub unsorted: usize,
    pub oldest: u64,
}

pub fn summarise(entries: &[Entry]) -> Summary {
    let mut s = Summary {
        messages: entries.len(),
        ..Summary::default()
    };
    for e in entries {
        s.oldest = s.oldest.max(e.age);
        match queuecmd::state_word(e) {
            "held" => s.held += 1,
            "deferred" => s.deferred += 1,
            "new" => s.new += 1,
            _ => {}
        }
        match &e.info {
            None => s.unsorted += e.new_rcpts,
            Some(i) => {
                for r in i.rcpts.iter().filter(|r| r.state == State::Pending) {
                    if r.channel == Channel::Local {
                        s.local += 1;
                    } else {
                        s.remote += 1;
                    }
                }
            }
        }
    }
    s
}

pub fn queue_line(s: &Summary) -> String {
    if s.messages == 0 {
        return "queue      empty".into();
    }
    let mut t = format!(
        "queue      {} message{}: {} held, {} deferred, {} new; recipients pending: {} local, {} remote",
        s.messages,
        if s.messages == 1 { "" } else { "s" },
        s.held,
        s.deferred,
        s.new,
        s.local,
        s.remote
    );
    if s.unsorted > 0 {
        let _ = write!(t, ", {} not yet sorted", s.unsorted);
    }
    let _ = write!(t, "; oldest {}", s6::duration(s.oldest));
    t
}

fn service_line(name: &str, st: Option<&s6::Status>, log: Option<&s6::Status>) -> (String, bool) {
    let log = match log {
        Some(l) if l.up => "log up",
        Some(_) => "log DOWN",
        None => "log not supervised",
    };
    match st {
        None => (
            format!("{name:<10} not supervised                              {log}"),
            false,
        ),
        Some(st) if st.up => {
            let ready = if st.ready {
                format!("ready {}", s6::duration(st.readyfor))
            } else {
                "NOT READY".into()
            };
            let pid = st.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
            (
                format!(
                    "{name:<10} up    pid {pid:<8} up {:<9} {ready:<14} {log}",
                    s6::duration(st.updownfor)
                ),
                st.ready,
            )
        }
        Some(st) => (
            format!(
                "{name:<10} DOWN  for {:<33} {log}",
                s6::duration(st.updownfor)
            ),
            false,
        ),
    }
}

/// The report and the exit code: 0 when every service is up and ready, 1 when one is not,
/// 111 when the queue cannot be read.
pub fn run(root: &Root) -> Result<(String, i32)> {
    let mut out = String::new();
    let mode = Mode::of_root(root);
    let _ = writeln!(
        out,
        "ferry in {} ({})",
        root.path().display(),
        mode.describe()
    );
    let mut code = 0;
    if s6::svscan_running(root)? {
        let _ = writeln!(
            out,
            "{:<10} running on {}",
            "s6-svscan",
            root.service().display()
        );
    } else {
        let _ = writeln!(
            out,
            "{:<10} NOT running ({} start)",
            "s6-svscan",
            root.bin("ferryctl").display()
        );
        code = 1;
    }
    let handled = s6::handled(root)?;
    for name in s6::ALL {
        if !s6::installed(root, name) {
            continue;
        }
        let dir = s6::service_dir(root, name);
        let st = s6::status(&dir)?;
        if !handled.contains(name) {
            // A submission service that is not meant to run yet: not a failure.
            let why = match s6::not_configured(root) {
                Some(why) => format!("not configured: {why}"),
                None => format!(
                    "configured, not enabled: {} start starts it",
                    root.bin("ferryctl").display()
                ),
            };
            let _ = writeln!(out, "{name:<10} down  ({why})");
            continue;
        }
        let log = s6::status(&dir.join("log"))?;
        let (line, ok) = service_line(name, st.as_ref(), log.as_ref());
        let _ = writeln!(out, "{line}");
        if !ok {
            code = 1;
        }
    }
    match Config::load(root) {
        Ok(cfg) => {
            let addrs: Vec<String> = cfg.smtplisten.iter().map(|a| a.to_string()).collect();
            let tls = if cfg.tlscert.is_some() && cfg.tlskey.is_some() {
                "STARTTLS on"
            } else {
                "no STARTTLS"
            };
            let _ = writeln!(
                out,
                "{:<10} {} as {}, {tls}",
                "listen",
                addrs.join(" "),
                cfg.me
            );
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "{:<10} {e} ({} check lists every problem)",
                "config",
                root.bin("ferryctl").display()
            );
        }
    }
    match queuecmd::scan(&Queue::new(root)) {
        Ok(entries) => {
            let _ = writeln!(out, "{}", queue_line(&summarise(&entries)));
        }
        Err(e) => {
            let _ = writeln!(out, "queue      cannot read it: {e:#}");
            if code == 0 {
                code = 111;
            }
        }
    }
    Ok((out, code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_lines() {
        assert_eq!(queue_line(&Summary::default()), "queue      empty");
        let s = Summary {
            messages: 2,
            held: 1,
            deferred: 1,
            new: 0,
            local: 1,
            remote: 2,
            unsorted: 0,
            oldest: 7800,
        };
        assert_eq!(
            queue_line(&s),
            "queue      2 messages: 1 held, 1 deferred, 0 new; recipients pending: 1 local, 2 remote; oldest 2h 10m"
        );
    }

    #[test]
    fn service_lines() {
        let up = s6::Status {
            up: true,
            ready: true,
            pid: Some(42),
            updownfor: 65,
            readyfor: 64,
        };
        let (l, ok) = service_line("smtpd", Some(&up), Some(&up));
        assert!(
            ok && l.contains("up    pid 42") && l.contains("up 1m 5s") && l.contains("ready 1m 4s"),
            "{l}"
        );
        let down = s6::Status {
            up: false,
            ready: false,
            pid: None,
            updownfor: 3,
            readyfor: 0,
        };
        let (l, ok) = service_line("send", Some(&down), None);
        assert!(
            !ok && l.contains("DOWN") && l.contains("log not supervised"),
            "{l}"
        );
    }
}
