//! ferry-common: what every ferry program shares.
//!
//! - [`root`]: the install root, found from the program's own location.
//! - [`control`] and [`config`]: the control files (one value per file) and their table.
//! - [`status`]: result codes 0/100/111 and the `queue` exit code table.
//! - [`envelope`], [`id`], [`queue`], [`info`]: the queue's formats and the commit protocol.
//! - [`record`]: framed records between programs (send, spawners, clean, workers).
//! - [`route`]: where an address goes (local user, mailbox, alias, remote).
//! - [`layout`]: the install manifest (directories, owners, modes).

pub mod addr;
pub mod config;
pub mod control;
pub mod date;
pub mod durable;
pub mod envelope;
pub mod hops;
pub mod id;
pub mod info;
pub mod inject;
pub mod layout;
pub mod log;
pub mod pool;
pub mod queue;
pub mod record;
pub mod rfc5322;
pub mod root;
pub mod route;
pub mod srs;
pub mod status;
pub mod tlsrpt;
pub mod users;
pub mod writer;
