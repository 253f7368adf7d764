//! An SMTP client connection: connect, greeting, EHLO (HELO when EHLO is refused), STARTTLS,
//! and reading replies (ferry-smtp's bounded reply parser), every step under a timeout.

use crate::tls::{self, TlsConfigs};
use ferry_smtp::{ParsedReply, ReplyParser};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, data),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Extensions {
    pub pipelining: bool,
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    /// DSN (RFC 3461): the server takes RET, ENVID, NOTIFY and ORCPT.
    pub dsn: bool,
    /// REQUIRETLS (RFC 8689): the server takes such messages and keeps the promise.
    pub requiretls: bool,
    /// The SASL mechanisms of `AUTH` (uppercase).
    pub auth: Vec<String>,
}

impl Extensions {
    fn from_ehlo(r: &ParsedReply) -> Extensions {
        let mut e = Extensions::default();
        for line in r.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let kw = words.next().unwrap_or("").to_ascii_uppercase();
            match kw.as_str() {
                "PIPELINING" => e.pipelining = true,
                "8BITMIME" => e.eightbitmime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "STARTTLS" => e.starttls = true,
                "DSN" => e.dsn = true,
                "REQUIRETLS" => e.requiretls = true,
                "AUTH" => e.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                "SIZE" => e.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        e
    }
}

/// Why a step failed.
#[derive(Debug)]
pub enum Failure {
    /// The server answered with this reply.
    Reply(ParsedReply),
    /// The connection broke, timed out, or the server spoke nonsense.
    Io(String),
}

impl Failure {
    pub fn text(&self) -> String {
        match self {
            Failure::Reply(r) => reply_text(r),
            Failure::Io(t) => t.clone(),
        }
    }
}

/// "550 5.1.1 text" from a parsed reply.
pub fn reply_text(r: &ParsedReply) -> String {
    let enh = r
        .enhanced
        .map(|(a, b, c)| format!(" {a}.{b}.{c}"))
        .unwrap_or_default();
    let text: Vec<&str> = r.lines.iter().map(|l| l.as_str()).collect();
    let t = text.join(" ");
    let t: String = t.chars().filter(|c| !c.is_control()).take(400).collect();
    format!("{}{enh} {t}", r.code)
}

pub struct Client {
    stream: Stream,
    parser: ReplyParser,
    pub timeout: Duration,
    pub ext: Extensions,
    pub host: String,
    pub ip: IpAddr,
    pub port: u16,
    /// "TLSv1.3 ..." once STARTTLS succeeded.
    pub tls: Option<String>,
    pub verified: bool,
    pub used: u32,
}

pub enum TlsPolicy {
    /// Use STARTTLS when offered, any certificate; plaintext otherwise.
    Opportunistic,
    /// STARTTLS with a verified certificate, or no delivery.
    Required,
    /// Do not try TLS (a retry after a failed handshake).
    Never,
}

impl Client {
    pub async fn connect(
        addr: SocketAddr,
        host: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Client, Failure> {
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Failure::Io(format!(
                    "cannot connect to {host}[{}]:{}: {e}",
                    addr.ip(),
                    addr.port()
                )));
            }
            Err(_) => {
                return Err(Failure::Io(format!(
                    "timed out connecting to {host}[{}]:{}",
                    addr.ip(),
                    addr.port()
                )));
            }
        };
        let _ = stream.set_nodelay(true);
        let mut c = Client {
            stream: Stream::Plain(stream),
            parser: ReplyParser::new(),
            timeout,
            ext: Extensions::default(),
            host: host.to_string(),
            ip: addr.ip(),
            port: addr.port(),
            tls: None,
            verified: false,
            used: 0,
        };
        let greeting = c.reply().await?;
        if greeting.code / 100 != 2 {
            return Err(Failure::Reply(greeting));
        }
        Ok(c)
    }

    /// "mx.example.org[192.0.2.1]:25" ("[192.0.2.1]:25" for an address route).
    pub fn relay(&self) -> String {
        if self.host.starts_with('[') {
            format!("{}:{}", self.host, self.port)
        } else {
            format!("{}[{}]:{}", self.host, self.ip, self.port)
        }
    }

    /// Reads one reply (all its lines).
    pub async fn reply(&mut self) -> Result<ParsedReply, Failure> {
        let mut buf = [0u8; 4096];
        loop {
            match self.parser.next_reply() {
                Some(Ok(r)) => return Ok(r),
                Some(Err(e)) => {
                    return Err(Failure::Io(format!(
                        "{} sent a malformed reply: {e:?}",
                        self.host
                    )));
                }
                None => {}
            }
            let n = match tokio::time::timeout(self.timeout, self.stream.read(&mut buf)).await {
                Ok(Ok(0)) => {
                    return Err(Failure::Io(format!("{} closed the connection", self.host)));
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(Failure::Io(format!("reading from {}: {e}", self.host))),
                Err(_) => return Err(Failure::Io(format!("timed out waiting for {}", self.host))),
            };
            self.parser.feed(&buf[..n]);
        }
    }

    /// Reads one reply, waiting up to `limit` instead of the usual timeout.
    pub async fn reply_within(&mut self, limit: Duration) -> Result<ParsedReply, Failure> {
        let usual = std::mem::replace(&mut self.timeout, limit);
        let r = self.reply().await;
        self.timeout = usual;
        r
    }

    pub async fn send(&mut self, data: &[u8]) -> Result<(), Failure> {
        match tokio::time::timeout(self.timeout, self.stream.write_all(data)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Io(format!("writing to {}: {e}", self.host))),
            Err(_) => Err(Failure::Io(format!("timed out writing to {}", self.host))),
        }
    }

    pub async fn flush(&mut self) -> Result<(), Failure> {
        match tokio::time::timeout(self.timeout, self.stream.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Failure::Io(format!("writing to {}: {e}", self.host))),
            Err(_) => Err(Failure::Io(format!("timed out writing to {}", self.host))),
        }
    }

    pub async fn command(&mut self, line: &str) -> Result<ParsedReply, Failure> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.flush().await?;
        self.reply().await
    }

    /// EHLO (HELO if refused); records the extensions.
    pub async fn hello(&mut self, helo: &str) -> Result<(), Failure> {
        let r = self.command(&format!("EHLO {helo}")).await?;
        if r.code / 100 == 2 {
            self.ext = Extensions::from_ehlo(&r);
            return Ok(());
        }
        if r.code / 100 == 5 {
            let r = self.command(&format!("HELO {helo}")).await?;
            if r.code / 100 == 2 {
                self.ext = Extensions::default();
                return Ok(());
            }
            return Err(Failure::Reply(r));
        }
        Err(Failure::Reply(r))
    }

    /// STARTTLS and the handshake. The caller reconnects in plaintext after a failure unless
    /// TLS is required.
    pub async fn starttls(
        mut self,
        configs: &TlsConfigs,
        required: bool,
        helo: &str,
    ) -> Result<Client, Failure> {
        let r = self.command("STARTTLS").await?;
        if r.code != 220 {
            return Err(Failure::Reply(r));
        }
        let Stream::Plain(tcp) = self.stream else {
            return Err(Failure::Io("TLS is already on".into()));
        };
        let cfg = if required {
            configs.verified.clone()
        } else {
            configs.opportunistic.clone()
        };
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .or_else(|_| rustls::pki_types::ServerName::try_from(self.ip.to_string()))
            .map_err(|e| Failure::Io(format!("bad server name {}: {e}", self.host)))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&cfg));
        let tls = match tokio::time::timeout(self.timeout, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Failure::Io(format!(
                    "TLS handshake with {} failed: {e}",
                    self.host
                )));
            }
            Err(_) => {
                return Err(Failure::Io(format!(
                    "TLS handshake with {} timed out",
                    self.host
                )));
            }
        };
        self.tls = Some(tls::describe(tls.get_ref().1));
        self.verified = required;
        self.stream = Stream::Tls(Box::new(tls));
        self.parser = ReplyParser::new();
        self.hello(helo).await?;
        Ok(self)
    }

    /// AUTH PLAIN (LOGIN when PLAIN is not offered) with `user` and `password`. Only called
    /// over TLS with a verified certificate (deliver.rs).
    pub async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), Failure> {
        use ferry_smtp::sasl::encode;
        if !(self.tls.is_some() && self.verified) {
            return Err(Failure::Io("AUTH refused: not over verified TLS".into()));
        }
        let has = |m: &str| self.ext.auth.iter().any(|a| a == m);
        let r = if has("PLAIN") {
            let msg = format!("\0{user}\0{password}");
            self.command(&format!("AUTH PLAIN {}", encode(msg.as_bytes())))
                .await?
        } else if has("LOGIN") {
            let r = self.command("AUTH LOGIN").await?;
            if r.code != 334 {
                return Err(Failure::Reply(r));
            }
            let r = self.command(&encode(user.as_bytes())).await?;
            if r.code != 334 {
                return Err(Failure::Reply(r));
            }
            self.command(&encode(password.as_bytes())).await?
        } else {
            return Err(Failure::Io(format!(
                "4.7.0 {} offers no AUTH PLAIN or LOGIN",
                self.host
            )));
        };
        if r.code == 235 {
            Ok(())
        } else {
            Err(Failure::Reply(r))
        }
    }

    /// QUIT, without waiting long for the answer.
    pub async fn quit(mut self) {
        self.timeout = Duration::from_secs(5);
        let _ = self.command("QUIT").await;
        let _ = self.stream.shutdown().await;
    }
}
