//! Peers for remote-delivery tests: dnsmasq on a loopback port with the test's records, and
//! the scripted SMTP receiver (tests/peers/scripted_smtp.py). Both are stopped by their pid
//! when dropped.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A sending root: remote deliveries ask `dns` and reach servers found by MX on `port`, with
/// short timeouts; `controls` are written after those (so they may override them); send runs.
pub fn sender(dns: &Dns, port: u16, controls: &[(&str, &str)]) -> crate::Env {
    let mut env = crate::Env::new();
    env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
    env.control("remoteport", &port.to_string());
    env.control("timeoutconnect", "5");
    env.control("timeoutremote", "10");
    for (k, v) in controls {
        env.control(k, v);
    }
    env.start_send();
    env
}

pub struct Dns {
    child: Child,
    pub port: u16,
}

impl Dns {
    /// dnsmasq answering only from `args` (--mx-host=..., --host-record=..., ...) for `.test`.
    /// Returns once it answers a query; a port taken meanwhile is retried on another.
    pub fn start(args: &[String]) -> Dns {
        for _ in 0..5 {
            let port = crate::free_port();
            let mut child = Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                ])
                .arg(format!("--port={port}"))
                .arg("--pid-file=")
                .arg("--local=/test/")
                .arg("--user=root")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq (package dnsmasq-base) must be installed");
            if answers(port, &mut child) {
                return Dns { child, port };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start (five ports tried)");
    }
}

/// True once dnsmasq on `port` answers a query (any answer); false if it exited (a port clash)
/// or stayed silent for 10 s.
fn answers(port: u16, child: &mut Child) -> bool {
    // A query for ready.test, type A, class IN, id 0x1234, recursion desired.
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ready", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 512];
    while start.elapsed() < Duration::from_secs(10) {
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        let _ = sock.send_to(&q, ("127.0.0.1", port));
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && n >= 2
            && buf[..2] == [0x12, 0x34]
        {
            return true;
        }
    }
    false
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scripted receiver: `config` is its JSON; change it with `set` between attempts.
pub struct Scripted {
    child: Child,
    pub config: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
}

impl Scripted {
    pub fn start(dir: PathBuf, listen: &str, port: u16, config: &str) -> Scripted {
        std::fs::create_dir_all(dir.join("mail")).unwrap();
        let cfgpath = dir.join("config.json");
        let portfile = dir.join("port");
        let _ = std::fs::remove_file(&portfile);
        let mut v = config
            .trim()
            .strip_suffix('}')
            .unwrap_or(config.trim())
            .to_string();
        if !v.trim_end().ends_with('{') {
            v.push(',');
        }
        let full = format!(
            "{v} \"listen\": \"{listen}\", \"port\": {port}, \"portfile\": \"{}\", \"maildir\": \"{}\"}}",
            portfile.display(),
            dir.join("mail").display()
        );
        std::fs::write(&cfgpath, &full).unwrap();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/scripted_smtp.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(&cfgpath)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !portfile.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "scripted receiver did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let port = std::fs::read_to_string(&portfile).unwrap().parse().unwrap();
        Scripted {
            child,
            config: cfgpath,
            dir,
            port,
        }
    }

    /// Replaces one "key": value in the config (value as JSON text).
    pub fn set(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let mut obj: Vec<String> = Vec::new();
        // The config is one flat JSON object written by us: rewrite it whole with Python.
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!("import json,sys; d=json.loads(sys.argv[1]); d[{key:?}]=json.loads(sys.argv[2]); print(json.dumps(d))"))
            .arg(&text)
            .arg(value)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        obj.push(String::from_utf8(out.stdout).unwrap());
        // Atomically: the receiver re-reads the file at every connection and MAIL.
        let tmp = self.config.with_extension("json.tmp");
        std::fs::write(&tmp, obj.join("")).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    /// How many connections it accepted, and the most that were open at once.
    pub fn connections(&self) -> (usize, usize) {
        let n = std::fs::read_to_string(self.dir.join("connections.log"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        let max = std::fs::read_to_string(self.dir.join("max_active"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        (n, max)
    }

    /// One "MAIL pipelined=yes|no" line per transaction, in order.
    pub fn transactions(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("transactions.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// The messages it accepted, as text.
    pub fn received(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join("mail"))
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
