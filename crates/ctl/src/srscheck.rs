//! `ferryctl check`'s line for SRS (crates/common/src/srs.rs): control/srssecret is there,
//! with the owner and mode that let queue and send read it and nobody else.

use crate::check::{Item, fail, ok, warn};
use ferry_common::config::Config;
use ferry_common::root::Root;
use ferry_common::users::{self, Mode};
use std::os::unix::fs::MetadataExt;

pub fn check(root: &Root, cfg: &Config) -> Vec<Item> {
    let path = root.control_file("srssecret");
    let Ok(m) = std::fs::metadata(&path) else {
        return vec![warn(
            "no control/srssecret: mail forwarded to other domains keeps its sender, and SPF fails at the next hop",
            "ferryctl init writes a new one",
        )];
    };
    if Mode::of_root(root) == Mode::Separated {
        let q = nix::unistd::User::from_name(users::QUEUE).ok().flatten();
        let g = nix::unistd::Group::from_name(users::GROUP).ok().flatten();
        let right = q.is_some_and(|q| q.uid.as_raw() == m.uid())
            && g.is_some_and(|g| g.gid.as_raw() == m.gid())
            && m.mode() & 0o777 == 0o640;
        if !right {
            return vec![fail(
                format!(
                    "control/srssecret is not mode 0640 {}:{} (mode {:o}): queue or send cannot read it, or others can",
                    users::QUEUE,
                    users::GROUP,
                    m.mode() & 0o777
                ),
                format!(
                    "chown {}:{} {p}; chmod 0640 {p}",
                    users::QUEUE,
                    users::GROUP,
                    p = path.display()
                ),
            )];
        }
    }
    match &cfg.srs {
        Some(srs) => vec![ok(format!(
            "SRS: mail forwarded to other domains leaves as SRS0=...@{}",
            srs.domain
        ))],
        None => vec![warn(
            "control/srssecret is there but unreadable here: SRS not checked",
            "run ferryctl check as root",
        )],
    }
}
