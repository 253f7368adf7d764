//! A plain SMTP client for tests that must send exactly the bytes they want (pipelining,
//! smuggling attempts, garbage). Real clients (swaks, smtplib, smtp-source) are used elsewhere.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Smtp {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Smtp {
    /// Connects and reads the greeting.
    pub fn connect(port: u16) -> Smtp {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut s = Smtp { stream, reader };
        let (code, text) = s.reply();
        assert_eq!(code, 220, "greeting: {text}");
        s
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// One reply: (code, all lines joined by "\n"). Code 0 if the server closed.
    pub fn reply(&mut self) -> (u16, String) {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return (0, text.join("\n")),
                Ok(_) => {}
            }
            let line = line.trim_end().to_string();
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            let last = line.as_bytes().get(3) != Some(&b'-');
            text.push(line);
            if last {
                return (code, text.join("\n"));
            }
        }
    }

    /// Sends a command line (CRLF added) and reads its reply.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// EHLO, MAIL, RCPT..., DATA, the message, the final dot; returns the last reply.
    pub fn mail(&mut self, from: &str, to: &[&str], body: &str) -> (u16, String) {
        assert_eq!(self.cmd("EHLO client.test").0, 250);
        assert_eq!(self.cmd(&format!("MAIL FROM:<{from}>")).0, 250);
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>"));
            assert_eq!(r.0, 250, "{r:?}");
        }
        assert_eq!(self.cmd("DATA").0, 354);
        self.send(body.as_bytes());
        self.cmd(".")
    }
}
