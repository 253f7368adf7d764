//! What the mail authentication tests share (tests/auth.rs, tests/auth_forward.rs): the
//! Python peer (smtplib and dkimpy), the test keys, the DNS records on dnsmasq, a receiving
//! site, and readers of delivered messages.

#![allow(dead_code, clippy::unwrap_used)]

use ferry_e2e::supervision::Dnsmasq;
use ferry_e2e::{Env, is_root};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Python with dkimpy (a pyenv `python3` may come first in PATH without it).
pub const PYTHON: &str = "/usr/bin/python3";

/// The other side: `send PORT HELO MAILFROM RCPT FILE [--sign ALGO SELECTOR DOMAIN KEYFILE
/// now|expired]... [--canon HEADER/BODY (before --sign; default relaxed/relaxed)] [--arc SELECTOR DOMAIN KEYFILE] [--tamper body|subject] [--auth USER
/// PASSWORD]` signs the message in FILE with dkimpy (each
/// --sign adds a signature on top; expired: t= ten days ago, x= five days ago; --arc adds
/// DOMAIN's Authentication-Results and seals it as an ARC set, rsa-sha256), tampers with
/// it after signing, sends it with smtplib (with --auth: STARTTLS, then AUTH) and prints the final reply: `CODE TEXT` (or `MAIL
/// CODE TEXT` / `RCPT CODE TEXT` when refused earlier). `arcverify FILE NAME=TXT...` prints
/// dkimpy's ARC chain verdict (`pass|fail|none COMMENT`). `verify FILE NAME=TXT...` verifies
/// every DKIM-Signature of FILE (LF line ends are made CR LF) with the given TXT records as
/// the only DNS and prints `d s a pass|fail` per signature, top first.
pub const PEER: &str = r#"
import sys, smtplib, time, dkim

def crlf(b):
    return b.replace(b'\r\n', b'\n').replace(b'\n', b'\r\n')

def send(args):
    port, helo, mail_from, rcpt, path = args[:5]
    opts = args[5:]
    msg = crlf(open(path, 'rb').read())
    tamper = None
    auth = None
    canon = (b'relaxed', b'relaxed')
    i = 0
    while i < len(opts):
        if opts[i] == '--sign':
            algo, selector, domain, keyfile, when = opts[i + 1:i + 6]
            i += 6
            key = open(keyfile, 'rb').read().strip()
            orig = dkim.DKIM.gen_header
            if when == 'expired':
                now = int(time.time())
                def gen(self, fields, *a, **k):
                    fields = [(t, str(now - 864000).encode()) if t == b't' else (t, v) for t, v in fields]
                    fields.insert(len(fields) - 1, (b'x', str(now - 432000).encode()))
                    return orig(self, fields, *a, **k)
                dkim.DKIM.gen_header = gen
            sig = dkim.sign(msg, selector.encode(), domain.encode(), key,
                            canonicalize=canon,
                            signature_algorithm=algo.encode(),
                            include_headers=[b'from', b'to', b'subject', b'date', b'message-id'])
            dkim.DKIM.gen_header = orig
            msg = sig + msg
        elif opts[i] == '--tamper':
            tamper = opts[i + 1]
            i += 2
        elif opts[i] == '--canon':
            canon = tuple(c.encode() for c in opts[i + 1].split('/'))
            i += 2
        elif opts[i] == '--arc':
            selector, domain, keyfile = opts[i + 1:i + 4]
            i += 4
            key = open(keyfile, 'rb').read().strip()
            msg = ('Authentication-Results: %s; spf=pass smtp.mailfrom=%s\r\n' % (domain, mail_from)).encode() + msg
            seal = dkim.arc_sign(msg, selector.encode(), domain.encode(), key, domain.encode())
            msg = b''.join(seal) + msg
        elif opts[i] == '--auth':
            auth = opts[i + 1:i + 3]
            i += 3
        else:
            raise SystemExit('bad option ' + opts[i])
    if tamper == 'body':
        msg = msg.replace(b'pay 10 euros', b'pay 1000 euros')
    elif tamper == 'subject':
        msg = msg.replace(b'Subject: ', b'Subject: URGENT ', 1)
    s = smtplib.SMTP('127.0.0.1', int(port), timeout=60)
    s.ehlo(helo)
    if auth:
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s.starttls(context=ctx)
        s.ehlo(helo)
        s.login(auth[0], auth[1])
    code, text = s.mail(mail_from)
    if code != 250:
        print('MAIL', code, text.decode())
        return
    code, text = s.rcpt(rcpt)
    if code != 250:
        print('RCPT', code, text.decode())
        return
    code, text = s.data(msg)
    print(code, text.decode().replace('\n', ' '))
    s.quit()

def verify(args):
    path = args[0]
    records = dict(a.split('=', 1) for a in args[1:])
    msg = crlf(open(path, 'rb').read())
    def dns(name, timeout=5):
        return records.get(name.decode().rstrip('.'), '').encode() or None
    d = dkim.DKIM(msg)
    sigs = [v for k, v in d.headers if k.lower() == b'dkim-signature']
    for idx, v in enumerate(sigs):
        tags = dkim.util.parse_tag_value(b''.join(v.split()))
        try:
            ok = dkim.DKIM(msg).verify(idx=idx, dnsfunc=dns)
        except dkim.ValidationError:
            ok = False
        print(tags[b'd'].decode(), tags[b's'].decode(), tags[b'a'].decode(), 'pass' if ok else 'fail')

def arcverify(args):
    path = args[0]
    records = dict(a.split('=', 1) for a in args[1:])
    msg = crlf(open(path, 'rb').read())
    def dns(name, timeout=5):
        return records.get(name.decode().rstrip('.'), '').encode() or None
    cv, results, comment = dkim.arc_verify(msg, dnsfunc=dns)
    print(cv.decode(), comment)

{'send': send, 'verify': verify, 'arcverify': arcverify}[sys.argv[1]](sys.argv[2:])
"#;

pub fn python(args: &[&str]) -> String {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(PEER)
        .args(args)
        .output()
        .expect("/usr/bin/python3 (with python3-dkim) must be installed");
    assert!(
        out.status.success(),
        "python {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn base64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The test process's keys, made with openssl.
pub struct Keys {
    /// PEM, PKCS#8 (what ferry reads; `openssl genpkey` writes it).
    pub rsa_pkcs8: Vec<u8>,
    /// PEM, PKCS#1 (what dkimpy reads).
    pub rsa_pkcs1: Vec<u8>,
    /// The DKIM record's p=: base64 of the SubjectPublicKeyInfo.
    pub rsa_p: String,
    pub ed_pkcs8: Vec<u8>,
    /// What dkimpy signs with: base64 of the 32-byte seed.
    pub ed_seed: String,
    /// p= for ed25519: base64 of the 32 raw bytes (RFC 8463 §4.2).
    pub ed_p: String,
}

pub fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &p("rsa.pem"),
        ]);
        let rsa_pkcs1 = openssl(&["rsa", "-in", &p("rsa.pem"), "-traditional"]);
        let rsa_spki = openssl(&["pkey", "-in", &p("rsa.pem"), "-pubout", "-outform", "DER"]);
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", &p("ed.pem")]);
        let ed_der = openssl(&["pkey", "-in", &p("ed.pem"), "-outform", "DER"]);
        let ed_spki = openssl(&["pkey", "-in", &p("ed.pem"), "-pubout", "-outform", "DER"]);
        Keys {
            rsa_pkcs8: std::fs::read(p("rsa.pem")).unwrap(),
            rsa_pkcs1,
            rsa_p: base64(&rsa_spki),
            ed_pkcs8: std::fs::read(p("ed.pem")).unwrap(),
            ed_seed: base64(&ed_der[ed_der.len() - 32..]),
            ed_p: base64(&ed_spki[ed_spki.len() - 32..]),
        }
    })
}

/// The TXT value publishing a key.
pub fn dkim_txt(kind: &str) -> String {
    let k = keys();
    match kind {
        "rsa" => format!("v=DKIM1; k=rsa; p={}", k.rsa_p),
        _ => format!("v=DKIM1; k=ed25519; p={}", k.ed_p),
    }
}

/// dnsmasq's --txt-record for NAME: the value cut into strings of at most 255 bytes (dnsmasq
/// splits at commas; DKIM and SPF values here have none).
pub fn txt(name: &str, value: &str) -> String {
    assert!(!value.contains(','));
    let parts: Vec<&str> = value
        .as_bytes()
        .chunks(255)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("--txt-record={name},{}", parts.join(","))
}

/// The DNS every test sees: one domain per case.
pub fn records() -> Vec<String> {
    let mut r = vec![
        // SPF, each result once (127.0.0.1 is the client).
        txt("pass.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("fail.test", "v=spf1 ip4:192.0.2.1 -all"),
        txt("soft.test", "v=spf1 ip4:192.0.2.1 ~all"),
        txt("neutral.test", "v=spf1 ?all"),
        "--host-record=none.test,192.0.2.7".to_string(),
        txt("perm.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("perm.test", "v=spf1 -all"),
        txt("syntax.test", "v=spf1 ip4 -all"),
        txt(
            "include.test",
            "v=spf1 include:none.test ip4:127.0.0.1 -all",
        ),
        // No name server for tmp.test: dnsmasq answers REFUSED at once.
        "--server=/tmp.test/#".to_string(),
        // DKIM: rsa and ed published; "gone" is not.
        txt("rsa._domainkey.dkim.test", &dkim_txt("rsa")),
        txt("ed._domainkey.dkim.test", &dkim_txt("ed")),
        // ARC: a forwarder's sealing key.
        txt("arc._domainkey.fwd.test", &dkim_txt("rsa")),
        // DMARC.
        txt("spf-aligned.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("_dmarc.spf-aligned.test", "v=DMARC1; p=reject"),
        txt("dkim-aligned.test", "v=spf1 ip4:192.0.2.1 -all"),
        txt("_dmarc.dkim-aligned.test", "v=DMARC1; p=reject"),
        txt("rsa._domainkey.dkim-aligned.test", &dkim_txt("rsa")),
        txt("reject.test", "v=spf1 ip4:192.0.2.1 -all"),
        txt("_dmarc.reject.test", "v=DMARC1; p=reject"),
        txt("quarantine.test", "v=spf1 ip4:192.0.2.1 -all"),
        txt("_dmarc.quarantine.test", "v=DMARC1; p=quarantine"),
        // Our own signing domain (ferry signs, far ends verify).
        txt("sign.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("rsa._domainkey.sign.test", &dkim_txt("rsa")),
        txt("ed._domainkey.sign.test", &dkim_txt("ed")),
        txt("_dmarc.sign.test", "v=DMARC1; p=reject"),
        // Forwarding (tests/auth_forward.rs): SRS addresses are in test.example (me), ARC
        // sets are sealed for virt.example, the forwarding addresses' domain.
        txt("test.example", "v=spf1 ip4:127.0.0.1 -all"),
        txt("rsa._domainkey.virt.example", &dkim_txt("rsa")),
        txt("ed._domainkey.virt.example", &dkim_txt("ed")),
        // A far ferry for ferry → ferry (its MX is on loopback, at remoteport).
        "--mx-host=far.test,mx.far.test,10".to_string(),
        "--host-record=mx.far.test,127.0.0.1".to_string(),
    ];
    r.sort();
    r
}

/// A receiving root: dnsmasq with [`records`], spfpolicy and dmarcpolicy as given (None:
/// the default), nobody in relayclients, send and smtpd running; `controls` written last.
pub struct Site {
    pub env: Env,
    pub _dns: Dnsmasq,
    pub port: u16,
    pub scratch: PathBuf,
    pub n: usize,
}

impl Site {
    pub fn new(spf: Option<&str>, dmarc: Option<&str>) -> Site {
        Site::with(spf, dmarc, &[])
    }

    pub fn with(spf: Option<&str>, dmarc: Option<&str>, controls: &[(&str, &str)]) -> Site {
        Site::build(spf, dmarc, controls, |_| {})
    }

    /// [`Site::with`], `setup` run on the root before the services start.
    pub fn build(
        spf: Option<&str>,
        dmarc: Option<&str>,
        controls: &[(&str, &str)],
        setup: impl FnOnce(&Env),
    ) -> Site {
        let mut env = Env::new();
        let scratch = env.root.join("..").join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        let dns = Dnsmasq::start(&env.root.join(".."), &records());
        env.control("resolvconf", &format!("127.0.0.1:{}", dns.port));
        // Without the file every loopback client is a relay client (config.rs's default).
        env.control("relayclients", "# nobody: 127.0.0.1 is a stranger");
        if let Some(p) = spf {
            env.control("spfpolicy", p);
        }
        if let Some(p) = dmarc {
            env.control("dmarcpolicy", p);
        }
        for (k, v) in controls {
            env.control(k, v);
        }
        setup(&env);
        env.start_send();
        let port = env.start_smtpd();
        Site {
            env,
            _dns: dns,
            port,
            scratch,
            n: 0,
        }
    }

    pub fn file(&mut self, content: &[u8]) -> PathBuf {
        self.n += 1;
        let p = self.scratch.join(format!("m{}", self.n));
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Sends `message` with smtplib (signed/tampered per `opts`); the final reply.
    pub fn send(
        &mut self,
        helo: &str,
        from: &str,
        rcpt: &str,
        message: &str,
        opts: &[&str],
    ) -> String {
        let f = self.file(message.as_bytes());
        let port = self.port.to_string();
        let mut args = vec!["send", &port, helo, from, rcpt, f.to_str().unwrap()];
        args.extend_from_slice(opts);
        python(&args)
    }

    /// The one message delivered to `name`@localhost.
    pub fn delivered(&self, name: &str) -> String {
        let got = self.env.wait_maildir(&self.env.mailbox(name), 1);
        assert_eq!(got.len(), 1, "{name}");
        String::from_utf8(got[0].clone()).unwrap()
    }

    pub fn key_file(&mut self, pem: &[u8]) -> String {
        self.file(pem).display().to_string()
    }
}

/// A message from `from` with a body the tamper test changes.
pub fn message(from: &str, subject: &str) -> String {
    format!(
        "From: Sender <{from}>\nTo: rcpt@localhost\nSubject: {subject}\nDate: Mon, 1 Jun 2026 10:00:00 +0000\nMessage-ID: <{subject}@client.test>\n\nPlease pay 10 euros.\n-- \nthe sender\n"
    )
}

/// The header fields of a delivered message, unfolded (continuation lines joined with their
/// whitespace), in order.
pub fn fields(msg: &str) -> Vec<(String, String)> {
    let head = msg.split("\n\n").next().unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            out.last_mut().unwrap().1.push_str(line);
        } else if let Some((n, v)) = line.split_once(':') {
            out.push((n.to_string(), v.trim_start().to_string()));
        }
    }
    out
}

pub fn all(msg: &str, name: &str) -> Vec<String> {
    fields(msg)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// Our Authentication-Results (the first one, which must be ours and above our Received).
pub fn ours(msg: &str) -> String {
    let f = fields(msg);
    let ar = f
        .iter()
        .position(|(n, _)| n == "Authentication-Results")
        .unwrap_or_else(|| panic!("no Authentication-Results:\n{msg}"));
    let received = f.iter().position(|(n, _)| n == "Received").unwrap();
    assert!(
        ar < received,
        "Authentication-Results below Received:\n{msg}"
    );
    let v = f[ar].1.clone();
    assert!(v.starts_with("test.example;"), "{v}");
    v
}

pub fn assert_has(haystack: &str, needles: &[&str]) {
    for n in needles {
        assert!(haystack.contains(n), "missing {n:?} in:\n{haystack}");
    }
}

/// Writes the test keys as control/dkim/DOMAIN/{rsa,ed}.key: mode 0600, owned by the signing
/// user (ferryq) when running as root.
pub fn install_keys(env: &Env, domain: &str) {
    use std::os::unix::fs::PermissionsExt;
    let dir = env.root.join("control/dkim").join(domain);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, pem) in [("rsa.key", &keys().rsa_pkcs8), ("ed.key", &keys().ed_pkcs8)] {
        let p = dir.join(name);
        std::fs::write(&p, pem).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        if is_root() {
            let q = nix::unistd::User::from_name(ferry_common::users::QUEUE)
                .unwrap()
                .unwrap();
            nix::unistd::chown(&p, Some(q.uid), Some(q.gid)).unwrap();
        }
    }
}

/// dkimpy's verdict on each DKIM-Signature of `msg` (top first): `d s a pass|fail`, with
/// the test keys published for `domain` as the only DNS.
pub fn dkimpy_verify(dir: &Path, msg: &[u8], domain: &str) -> Vec<String> {
    let f = tempfile::NamedTempFile::new_in(dir)
        .unwrap()
        .into_temp_path();
    std::fs::write(&f, msg).unwrap();
    let out = python(&[
        "verify",
        f.to_str().unwrap(),
        &format!("rsa._domainkey.{domain}={}", dkim_txt("rsa")),
        &format!("ed._domainkey.{domain}={}", dkim_txt("ed")),
    ]);
    out.lines().map(str::to_string).collect()
}

/// The DKIM-Signatures ferry made for `domain`: ed25519 and rsa, relaxed/relaxed, From
/// oversigned; dkimpy verifies both, and fails both once the body is changed.
pub fn assert_signed_by_us(dir: &Path, m: &str, domain: &str) {
    let sigs = all(m, "DKIM-Signature");
    assert_eq!(sigs.len(), 2, "{m}");
    for s in &sigs {
        let s: String = s.split_whitespace().collect();
        assert_has(&s, &["c=relaxed/relaxed", &format!("d={domain};")]);
        let h: Vec<&str> = s
            .split(';')
            .find_map(|t| t.strip_prefix("h="))
            .unwrap()
            .split(':')
            .collect();
        assert!(
            h.iter().filter(|n| **n == "From").count() >= 2,
            "From not oversigned: {s}"
        );
        for n in ["To", "Subject", "Date", "Message-ID", "Reply-To", "Cc"] {
            assert!(h.contains(&n), "{n} not signed: {s}");
        }
    }
    let v = dkimpy_verify(dir, m.as_bytes(), domain);
    assert_eq!(
        v,
        [
            format!("{domain} ed ed25519-sha256 pass"),
            format!("{domain} rsa rsa-sha256 pass")
        ],
        "{m}"
    );
    let tampered = m.replace("pay 10 euros", "pay 1000 euros");
    let v = dkimpy_verify(dir, tampered.as_bytes(), domain);
    assert_eq!(
        v,
        [
            format!("{domain} ed ed25519-sha256 fail"),
            format!("{domain} rsa rsa-sha256 fail")
        ]
    );
}
pub fn passwd(env: &Env, name: &str, password: &str) {
    use std::io::Write;
    let mut c = Command::new(env.root.join("bin/ferryctl"))
        .args(["passwd", name])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ferryctl passwd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
