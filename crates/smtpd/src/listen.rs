//! Binding the listening sockets: SO_REUSEADDR, IPv6 sockets IPv6-only (so that 0.0.0.0:25
//! and [::]:25 can both be bound), and a large listen backlog, so that a burst of connections
//! waits in the kernel instead of being refused.

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, setsockopt, socket,
    sockopt,
};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;

pub const BACKLOG: i32 = 4096;

pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))
        .map_err(|e| io::Error::other(format!("cannot bind {addr}: {e}")))?;
    listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from(fd))
}
