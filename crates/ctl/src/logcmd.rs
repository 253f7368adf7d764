//! `ferryctl log [SERVICE]`: follow the logs as s6-log writes them (ISO 8601 timestamps
//! first), by becoming `tail -F` on ROOT/log/SERVICE/current, or on the logs of every
//! service ferryctl handles (send, inject, smtpd, and submission and smtps when they are up or
//! enabled: crate::s6::handled).

use crate::{problem, s6};
use anyhow::Result;
use ferry_common::root::Root;
use std::os::unix::process::CommandExt;
use std::process::Command;

pub fn run(root: &Root, service: Option<&str>, lines: u32) -> Result<i32> {
    let names: Vec<&str> = match service {
        Some(s) => vec![s],
        // Every service handled now (the submission ones when up or enabled).
        None => s6::handled(root)?,
    };
    let mut cmd = Command::new("tail");
    cmd.arg("-n").arg(lines.to_string()).arg("-F");
    for n in &names {
        let dir = root.log().join(n);
        if let Err(e) = std::fs::read_dir(&dir) {
            return Err(problem(format!(
                "cannot read {}: {e} (run ferryctl as root?)",
                dir.display()
            )));
        }
        cmd.arg(dir.join("current"));
    }
    let e = cmd.exec();
    Err(crate::run::not_installed("tail", &e))
}
