//! Mail authentication (issue 10), end to end: SPF, DKIM and DMARC of mail received on port 25
//! (authverify, its Authentication-Results on top, the policies spfpolicy and dmarcpolicy
//! with their SMTP replies), forged Authentication-Results of ours removed, and DKIM signing
//! of our own mail (local injection, relay clients, authenticated users) checked by an
//! independent verifier. DNS is dnsmasq on loopback (control/resolvconf); the other side is
//! Python: smtplib as the SMTP client and dkimpy (Debian python3-dkim, run by /usr/bin/python3)
//! to sign what ferry verifies and to verify what ferry signs, rsa-sha256 and ed25519-sha256.
//! Keys are made with openssl for each test process.

#![allow(clippy::unwrap_used)]

use ferry_e2e::supervision::Dnsmasq;
use ferry_e2e::{Env, is_root};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Python with dkimpy (a pyenv `python3` may come first in PATH without it).
const PYTHON: &str = "/usr/bin/python3";

/// The other side: `send PORT HELO MAILFROM RCPT FILE [--sign ALGO SELECTOR DOMAIN KEYFILE
/// now|expired]... [--canon HEADER/BODY (before --sign; default relaxed/relaxed)] [--arc SELECTOR DOMAIN KEYFILE] [--tamper body|subject] [--auth USER
/// PASSWORD]` signs the message in FILE with dkimpy (each
/// --sign adds a signature on top; expired: t= ten days ago, x= five days ago; --arc adds
/// DOMAIN's Authentication-Results and seals it as an ARC set, rsa-sha256), tampers with
/// it after signing, sends it with smtplib (with --auth: STARTTLS, then AUTH) and prints the final reply: `CODE TEXT` (or `MAIL
/// CODE TEXT` / `RCPT CODE TEXT` when refused earlier). `verify FILE NAME=TXT...` verifies
/// every DKIM-Signature of FILE (LF line ends are made CR LF) with the given TXT records as
/// the only DNS and prints `d s a pass|fail` per signature, top first.
const PEER: &str = r#"
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

{'send': send, 'verify': verify}[sys.argv[1]](sys.argv[2:])
"#;

fn python(args: &[&str]) -> String {
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

fn base64(data: &[u8]) -> String {
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
struct Keys {
    /// PEM, PKCS#8 (what ferry reads; `openssl genpkey` writes it).
    rsa_pkcs8: Vec<u8>,
    /// PEM, PKCS#1 (what dkimpy reads).
    rsa_pkcs1: Vec<u8>,
    /// The DKIM record's p=: base64 of the SubjectPublicKeyInfo.
    rsa_p: String,
    ed_pkcs8: Vec<u8>,
    /// What dkimpy signs with: base64 of the 32-byte seed.
    ed_seed: String,
    /// p= for ed25519: base64 of the 32 raw bytes (RFC 8463 §4.2).
    ed_p: String,
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn keys() -> &'static Keys {
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
fn dkim_txt(kind: &str) -> String {
    let k = keys();
    match kind {
        "rsa" => format!("v=DKIM1; k=rsa; p={}", k.rsa_p),
        _ => format!("v=DKIM1; k=ed25519; p={}", k.ed_p),
    }
}

/// dnsmasq's --txt-record for NAME: the value cut into strings of at most 255 bytes (dnsmasq
/// splits at commas; DKIM and SPF values here have none).
fn txt(name: &str, value: &str) -> String {
    assert!(!value.contains(','));
    let parts: Vec<&str> = value
        .as_bytes()
        .chunks(255)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!("--txt-record={name},{}", parts.join(","))
}

/// The DNS every test sees: one domain per case.
fn records() -> Vec<String> {
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
        // A far ferry for ferry → ferry (its MX is on loopback, at remoteport).
        "--mx-host=far.test,mx.far.test,10".to_string(),
        "--host-record=mx.far.test,127.0.0.1".to_string(),
    ];
    r.sort();
    r
}

/// A receiving root: dnsmasq with [`records`], spfpolicy and dmarcpolicy as given (None:
/// the default), nobody in relayclients, send and smtpd running; `controls` written last.
struct Site {
    env: Env,
    _dns: Dnsmasq,
    port: u16,
    scratch: PathBuf,
    n: usize,
}

impl Site {
    fn new(spf: Option<&str>, dmarc: Option<&str>) -> Site {
        Site::with(spf, dmarc, &[])
    }

    fn with(spf: Option<&str>, dmarc: Option<&str>, controls: &[(&str, &str)]) -> Site {
        Site::build(spf, dmarc, controls, |_| {})
    }

    /// [`Site::with`], `setup` run on the root before the services start.
    fn build(
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

    fn file(&mut self, content: &[u8]) -> PathBuf {
        self.n += 1;
        let p = self.scratch.join(format!("m{}", self.n));
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Sends `message` with smtplib (signed/tampered per `opts`); the final reply.
    fn send(&mut self, helo: &str, from: &str, rcpt: &str, message: &str, opts: &[&str]) -> String {
        let f = self.file(message.as_bytes());
        let port = self.port.to_string();
        let mut args = vec!["send", &port, helo, from, rcpt, f.to_str().unwrap()];
        args.extend_from_slice(opts);
        python(&args)
    }

    /// The one message delivered to `name`@localhost.
    fn delivered(&self, name: &str) -> String {
        let got = self.env.wait_maildir(&self.env.mailbox(name), 1);
        assert_eq!(got.len(), 1, "{name}");
        String::from_utf8(got[0].clone()).unwrap()
    }

    fn key_file(&mut self, pem: &[u8]) -> String {
        self.file(pem).display().to_string()
    }
}

/// A message from `from` with a body the tamper test changes.
fn message(from: &str, subject: &str) -> String {
    format!(
        "From: Sender <{from}>\nTo: rcpt@localhost\nSubject: {subject}\nDate: Mon, 1 Jun 2026 10:00:00 +0000\nMessage-ID: <{subject}@client.test>\n\nPlease pay 10 euros.\n-- \nthe sender\n"
    )
}

/// The header fields of a delivered message, unfolded (continuation lines joined with their
/// whitespace), in order.
fn fields(msg: &str) -> Vec<(String, String)> {
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

fn all(msg: &str, name: &str) -> Vec<String> {
    fields(msg)
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

/// Our Authentication-Results (the first one, which must be ours and above our Received).
fn ours(msg: &str) -> String {
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

fn assert_has(haystack: &str, needles: &[&str]) {
    for n in needles {
        assert!(haystack.contains(n), "missing {n:?} in:\n{haystack}");
    }
}

#[test]
fn spf_results_are_marked() {
    let mut site = Site::new(None, None);
    let cases = [
        (
            "pass",
            "pass.test",
            "pass (test.example: domain of a@pass.test designates 127.0.0.1 as permitted sender)",
        ),
        (
            "fail",
            "fail.test",
            "fail (test.example: domain of a@fail.test does not designate 127.0.0.1 as permitted sender)",
        ),
        (
            "softfail",
            "soft.test",
            "softfail (test.example: domain of a@soft.test reports soft fail for 127.0.0.1)",
        ),
        (
            "neutral",
            "neutral.test",
            "neutral (test.example: domain of a@neutral.test reports neutral for 127.0.0.1)",
        ),
        (
            "none",
            "none.test",
            "none (test.example: no SPF records found for a@none.test)",
        ),
        (
            "permerror",
            "perm.test",
            "permerror (test.example: unable to verify SPF record for a@perm.test)",
        ),
        (
            "permerror2",
            "syntax.test",
            "permerror (test.example: unable to verify SPF record for a@syntax.test)",
        ),
        (
            "permerror3",
            "include.test",
            "permerror (test.example: unable to verify SPF record for a@include.test)",
        ),
        (
            "temperror",
            "tmp.test",
            "temperror (test.example: temporary dns error validating a@tmp.test)",
        ),
    ];
    for (word, domain, _) in &cases {
        let from = format!("a@{domain}");
        let r = site.send(
            "client.test",
            &from,
            &format!("spf-{word}@localhost"),
            &message(&from, word),
            &[],
        );
        assert!(r.starts_with("250 "), "{word}: {r}");
    }
    for (word, domain, text) in &cases {
        let m = site.delivered(&format!("spf-{word}"));
        let ar = ours(&m);
        assert_has(&ar, &[&format!("spf={text} smtp.mailfrom=a@{domain}")]);
        assert_eq!(all(&m, "Authentication-Results").len(), 1, "{m}");
        assert!(!m.contains("X-Ferry-Quarantine"), "{m}");
    }
    let log = site.env.log("smtpd.log");
    assert_has(
        &log,
        &[
            "auth=(spf=pass (pass.test)",
            "auth=(spf=temperror (tmp.test)",
        ],
    );
    // The verifier runs as ferryv (as root; single-user, as the one user).
    let want = if is_root() {
        nix::unistd::User::from_name(ferry_common::users::VERIFY)
            .unwrap()
            .unwrap()
            .uid
            .as_raw()
    } else {
        nix::unistd::getuid().as_raw()
    };
    let verifiers: Vec<u32> = ferry_e2e::supervision::processes_of(&site.env.root)
        .into_iter()
        .filter(|(_, name)| name == "authverify")
        .map(|(pid, _)| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
            uids.split_whitespace().nth(2).unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(verifiers, [want]);
}

#[test]
fn spf_enforced_refuses_fail_defers_temperror_and_takes_softfail() {
    let mut site = Site::new(Some("enforce"), None);
    let send = |site: &mut Site, domain: &str, rcpt: &str| {
        let from = format!("a@{domain}");
        site.send(
            "client.test",
            &from,
            &format!("{rcpt}@localhost"),
            &message(&from, rcpt),
            &[],
        )
    };
    let r = send(&mut site, "fail.test", "refused");
    assert!(
        r.starts_with("550 5.7.23 SPF of fail.test does not allow this host"),
        "{r}"
    );
    let r = send(&mut site, "tmp.test", "deferred");
    assert!(
        r.starts_with("451 4.7.24 SPF of tmp.test cannot be checked now"),
        "{r}"
    );
    let r = send(&mut site, "soft.test", "soft");
    assert!(r.starts_with("250 "), "{r}");
    let r = send(&mut site, "perm.test", "perm");
    assert!(r.starts_with("250 "), "{r}");
    let m = site.delivered("soft");
    assert_has(
        &ours(&m),
        &[
            "spf=softfail (test.example: domain of a@soft.test reports soft fail for 127.0.0.1) smtp.mailfrom=a@soft.test",
        ],
    );
    site.delivered("perm");
    site.env.wait_queue_empty();
    for n in ["refused", "deferred"] {
        assert!(
            site.env.maildir_new(&site.env.mailbox(n)).is_empty(),
            "{n} was delivered"
        );
    }
    let log = site.env.log("smtpd.log");
    assert_has(&log, &["from=<a@fail.test> rcpts=1", "5.7.23", "4.7.24"]);
}

#[test]
fn dkim_signatures_of_dkimpy_are_verified() {
    let mut site = Site::new(None, None);
    let rsa = site.key_file(&keys().rsa_pkcs1);
    let ed = site.key_file(keys().ed_seed.as_bytes());
    let from = "a@dkim.test";
    let sign_rsa = ["--sign", "rsa-sha256", "rsa", "dkim.test", &rsa, "now"];
    let sign_ed = ["--sign", "ed25519-sha256", "ed", "dkim.test", &ed, "now"];
    let both: Vec<&str> = sign_rsa.iter().chain(sign_ed.iter()).copied().collect();
    let gone = ["--sign", "rsa-sha256", "gone", "dkim.test", &rsa, "now"];
    let expired = ["--sign", "rsa-sha256", "rsa", "dkim.test", &rsa, "expired"];
    let body_rsa = [&sign_rsa[..], &["--tamper", "body"]].concat();
    let body_ed = [&sign_ed[..], &["--tamper", "body"]].concat();
    let subject_rsa = [&sign_rsa[..], &["--tamper", "subject"]].concat();
    let subject_ed = [&sign_ed[..], &["--tamper", "subject"]].concat();
    // The other canonicalisations (the stored message has LF line ends, signed with CR LF).
    let simple = [&["--canon", "simple/simple"][..], &sign_rsa[..]].concat();
    let relaxed_simple = [&["--canon", "relaxed/simple"][..], &sign_ed[..]].concat();
    let cases: Vec<(&str, &[&str], Vec<&str>)> = vec![
        (
            "rsa",
            &sign_rsa,
            vec!["dkim=pass header.i=@dkim.test header.s=rsa header.b="],
        ),
        (
            "ed",
            &sign_ed,
            vec!["dkim=pass header.i=@dkim.test header.s=ed header.b="],
        ),
        (
            "both",
            &both,
            vec![
                "dkim=pass header.i=@dkim.test header.s=ed header.b=",
                "dkim=pass header.i=@dkim.test header.s=rsa header.b=",
            ],
        ),
        (
            "body-rsa",
            &body_rsa,
            vec!["dkim=neutral (body hash did not verify) header.i=@dkim.test header.s=rsa"],
        ),
        (
            "body-ed",
            &body_ed,
            vec!["dkim=neutral (body hash did not verify) header.i=@dkim.test header.s=ed"],
        ),
        (
            "subject-rsa",
            &subject_rsa,
            vec!["dkim=fail (verification failed) header.i=@dkim.test header.s=rsa"],
        ),
        (
            "subject-ed",
            &subject_ed,
            vec!["dkim=fail (verification failed) header.i=@dkim.test header.s=ed"],
        ),
        (
            "gone",
            &gone,
            vec!["dkim=permerror (dns record not found) header.i=@dkim.test header.s=gone"],
        ),
        (
            "expired",
            &expired,
            vec!["dkim=neutral (signature error) header.i=@dkim.test header.s=rsa"],
        ),
        // Not signed: mail-auth reports no dkim= at all (RFC 8601 allows leaving it out).
        ("unsigned", &[], vec![]),
        (
            "simple",
            &simple,
            vec!["dkim=pass header.i=@dkim.test header.s=rsa header.b="],
        ),
        (
            "relaxed-simple",
            &relaxed_simple,
            vec!["dkim=pass header.i=@dkim.test header.s=ed header.b="],
        ),
    ];
    for (name, opts, _) in &cases {
        let r = site.send(
            "client.test",
            from,
            &format!("dkim-{name}@localhost"),
            &message(from, name),
            opts,
        );
        assert!(r.starts_with("250 "), "{name}: {r}");
    }
    for (name, _, want) in &cases {
        let m = site.delivered(&format!("dkim-{name}"));
        let ar = ours(&m);
        assert_has(&ar, &want.iter().map(|w| w.as_ref()).collect::<Vec<&str>>());
        assert_eq!(ar.matches("dkim=").count(), want.len(), "{name}: {ar}");
        if !["rsa", "ed", "both", "simple", "relaxed-simple"].contains(name) {
            assert!(!ar.contains("dkim=pass"), "{name}: {ar}");
        }
    }
}

#[test]
fn dmarc_marked_passes_by_spf_or_dkim_alignment_and_marks_failures() {
    let mut site = Site::new(None, None);
    dmarc_cases(&mut site, false);
}

#[test]
fn dmarc_enforced_rejects_quarantines_and_defers() {
    let mut site = Site::new(Some("mark"), Some("enforce"));
    dmarc_cases(&mut site, true);
}

fn dmarc_cases(site: &mut Site, enforce: bool) {
    let rsa = site.key_file(&keys().rsa_pkcs1);
    let sign = [
        "--sign",
        "rsa-sha256",
        "rsa",
        "dkim-aligned.test",
        &rsa,
        "now",
    ];
    // SPF alone: the MAIL FROM domain passes and is the From domain.
    let r = site.send(
        "client.test",
        "a@spf-aligned.test",
        "by-spf@localhost",
        &message("a@spf-aligned.test", "by-spf"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    // DKIM alone: SPF fails (marked only), the From domain's signature passes.
    let r = site.send(
        "client.test",
        "bounce@dkim-aligned.test",
        "by-dkim@localhost",
        &message("a@dkim-aligned.test", "by-dkim"),
        &sign,
    );
    assert!(r.starts_with("250 "), "{r}");
    // A signature of another domain does not align.
    let other = site.key_file(&keys().rsa_pkcs1);
    let sign_other = ["--sign", "rsa-sha256", "rsa", "dkim.test", &other, "now"];
    let r = site.send(
        "client.test",
        "a@reject.test",
        "rejected@localhost",
        &message("a@reject.test", "rejected"),
        &sign_other,
    );
    if enforce {
        assert!(
            r.starts_with("550 5.7.1 DMARC policy of reject.test rejects this message"),
            "{r}"
        );
    } else {
        assert!(r.starts_with("250 "), "{r}");
    }
    let r = site.send(
        "client.test",
        "a@quarantine.test",
        "quarantined@localhost",
        &message("a@quarantine.test", "quarantined"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    // The From domain's DMARC record cannot be had.
    let r = site.send(
        "client.test",
        "a@pass.test",
        "dmarc-temp@localhost",
        &message("a@tmp.test", "dmarc-temp"),
        &[],
    );
    if enforce {
        assert!(
            r.starts_with("451 4.7.1 DMARC of tmp.test cannot be checked now"),
            "{r}"
        );
    } else {
        assert!(r.starts_with("250 "), "{r}");
    }

    let m = site.delivered("by-spf");
    assert_has(
        &ours(&m),
        &[
            "spf=pass (test.example: domain of a@spf-aligned.test designates 127.0.0.1 as permitted sender) smtp.mailfrom=a@spf-aligned.test",
            "arc=none smtp.remote-ip=127.0.0.1",
            "dmarc=pass header.from=spf-aligned.test policy.dmarc=reject",
        ],
    );
    assert!(!ours(&m).contains("dkim="), "{m}");
    let m = site.delivered("by-dkim");
    assert_has(
        &ours(&m),
        &[
            "spf=fail (test.example: domain of bounce@dkim-aligned.test does not designate 127.0.0.1 as permitted sender) smtp.mailfrom=bounce@dkim-aligned.test",
            "dkim=pass header.i=@dkim-aligned.test header.s=rsa",
            "dmarc=pass header.from=dkim-aligned.test policy.dmarc=reject",
        ],
    );
    let m = site.delivered("quarantined");
    let ar = ours(&m);
    assert_has(
        &ar,
        &["dmarc=fail (policy not aligned) header.from=quarantine.test policy.dmarc=quarantine"],
    );
    let q = all(&m, "X-Ferry-Quarantine");
    if enforce {
        assert_eq!(
            q,
            ["DMARC policy of quarantine.test is quarantine and the message failed it"],
            "{m}"
        );
    } else {
        assert!(q.is_empty(), "{m}");
    }
    if enforce {
        site.env.wait_queue_empty();
        for n in ["rejected", "dmarc-temp"] {
            assert!(
                site.env.maildir_new(&site.env.mailbox(n)).is_empty(),
                "{n} was delivered"
            );
        }
    } else {
        let m = site.delivered("rejected");
        assert_has(
            &ours(&m),
            &[
                "dkim=pass header.i=@dkim.test header.s=rsa",
                "dmarc=fail (policy not aligned) header.from=reject.test policy.dmarc=reject",
            ],
        );
        let m = site.delivered("dmarc-temp");
        assert_has(
            &ours(&m),
            &["dmarc=temperror (dns error) header.from=tmp.test"],
        );
    }
}

#[test]
fn forged_authentication_results_of_ours_are_removed() {
    let mut site = Site::new(None, None);
    let msg = format!(
        "Authentication-Results: test.example; spf=pass smtp.mailfrom=a@fail.test\nAuthentication-Results: (our name) TEST.EXAMPLE.; dkim=pass header.d=fail.test\nAuthentication-Results:\n\ttest.example;\n\tdmarc=pass header.from=fail.test\nAuthentication-Results: mx.other.example; spf=pass smtp.mailfrom=a@fail.test\nAuthentication-Results: test.example.other.example; dkim=pass\n{}",
        message("a@fail.test", "forged")
    );
    let r = site.send("client.test", "a@fail.test", "forged@localhost", &msg, &[]);
    assert!(r.starts_with("250 "), "{r}");
    let m = site.delivered("forged");
    let ar = all(&m, "Authentication-Results");
    assert_eq!(ar.len(), 3, "{m}");
    assert!(
        ours(&m).contains("spf=fail (test.example: domain of a@fail.test does not designate"),
        "{m}"
    );
    assert_eq!(
        ar[1],
        "mx.other.example; spf=pass smtp.mailfrom=a@fail.test"
    );
    assert_eq!(ar[2], "test.example.other.example; dkim=pass");
    assert!(!m.contains("dmarc=pass"), "{m}");
}

/// Writes the test keys as control/dkim/DOMAIN/{rsa,ed}.key: mode 0600, owned by the signing
/// user (ferryq) when running as root.
fn install_keys(env: &Env, domain: &str) {
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
fn dkimpy_verify(dir: &Path, msg: &[u8], domain: &str) -> Vec<String> {
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
fn assert_signed_by_us(dir: &Path, m: &str, domain: &str) {
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

#[test]
fn local_injection_is_signed_and_dkimpy_verifies_it() {
    let env = Env::new();
    install_keys(&env, "sign.test");
    let mut env = env;
    env.start_send();
    let out = env.sendmail(
        &["-f", "user@sign.test", "injected@localhost"],
        message("user@sign.test", "injected").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A From domain without keys goes unsigned.
    let out = env.sendmail(
        &["-f", "user@other.test", "unsigned@localhost"],
        message("user@other.test", "unsigned").as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = String::from_utf8(env.wait_maildir(&env.mailbox("injected"), 1).remove(0)).unwrap();
    assert!(all(&m, "Authentication-Results").is_empty(), "{m}");
    assert_signed_by_us(&env.root.join(".."), &m, "sign.test");
    let m = String::from_utf8(env.wait_maildir(&env.mailbox("unsigned"), 1).remove(0)).unwrap();
    assert!(all(&m, "DKIM-Signature").is_empty(), "{m}");
}

#[test]
fn relayed_mail_is_signed_not_verified_and_verifies_at_a_far_ferry() {
    // The far ferry: a stranger's mail for far.test, verified.
    let far = Site::with(None, None, &[("virtualdomains", "far.test:mail/*")]);
    // Ours: 127.0.0.1 relays; far.test's MX is on loopback at the far ferry's port.
    let far_port = far.port.to_string();
    let mut site = Site::build(
        None,
        None,
        &[
            ("relayclients", "127.0.0.0/8"),
            ("remoteport", &far_port),
            ("timeoutconnect", "5"),
        ],
        |env| install_keys(env, "sign.test"),
    );
    let from = "user@sign.test";
    let r = site.send(
        "laptop.test",
        from,
        "relayed@localhost",
        &message(from, "relayed"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    let r = site.send(
        "laptop.test",
        from,
        "someone@far.test",
        &message(from, "far"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    let m = site.delivered("relayed");
    assert!(all(&m, "Authentication-Results").is_empty(), "{m}");
    assert_signed_by_us(&site.scratch, &m, "sign.test");
    assert!(
        !site.env.log("smtpd.log").contains("auth=("),
        "{}",
        site.env.log("smtpd.log")
    );

    let m = far.delivered("someone");
    let ar = ours(&m);
    assert_has(
        &ar,
        &[
            "spf=pass (test.example: domain of user@sign.test designates 127.0.0.1 as permitted sender) smtp.mailfrom=user@sign.test",
            "dkim=pass header.d=sign.test header.s=ed header.b=",
            "dkim=pass header.d=sign.test header.s=rsa header.b=",
            "dmarc=pass header.from=sign.test policy.dmarc=reject",
        ],
    );
    assert_signed_by_us(&far.scratch, &m, "sign.test");
}

fn passwd(env: &Env, name: &str, password: &str) {
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

#[test]
fn authenticated_mail_is_signed_not_verified() {
    let mut site = Site::build(None, None, &[], |env| {
        install_keys(env, "localhost");
        passwd(env, "bob@localhost", "bob's secret");
    });
    let (sub, _) = site.env.start_submission();
    let from = "bob@localhost";
    site.port = sub;
    let r = site.send(
        "laptop.test",
        from,
        "alice@localhost",
        &message(from, "submitted"),
        &["--auth", "bob@localhost", "bob's secret"],
    );
    assert!(r.starts_with("250 "), "{r}");
    let m = site.delivered("alice");
    assert!(all(&m, "Authentication-Results").is_empty(), "{m}");
    assert_signed_by_us(&site.scratch, &m, "localhost");
}

#[test]
fn arc_sets_of_dkimpy_are_verified() {
    let mut site = Site::new(None, None);
    let rsa = site.key_file(&keys().rsa_pkcs1);
    let from = "a@spf-aligned.test";
    let seal = ["--arc", "arc", "fwd.test", &rsa];
    let tampered = [&seal[..], &["--tamper", "body"]].concat();
    let subject = [&seal[..], &["--tamper", "subject"]].concat();
    let r = site.send(
        "fwd.test",
        from,
        "arc-pass@localhost",
        &message(from, "arc-pass"),
        &seal,
    );
    assert!(r.starts_with("250 "), "{r}");
    let r = site.send(
        "fwd.test",
        from,
        "arc-fail@localhost",
        &message(from, "arc-fail"),
        &tampered,
    );
    assert!(r.starts_with("250 "), "{r}");
    let r = site.send(
        "fwd.test",
        from,
        "arc-subject@localhost",
        &message(from, "arc-subject"),
        &subject,
    );
    assert!(r.starts_with("250 "), "{r}");
    let r = site.send(
        "fwd.test",
        from,
        "arc-none@localhost",
        &message(from, "arc-none"),
        &[],
    );
    assert!(r.starts_with("250 "), "{r}");
    for (name, want) in [
        ("arc-pass", "arc=pass smtp.remote-ip=127.0.0.1"),
        // As for DKIM, mail-auth calls a body changed since the seal neutral.
        (
            "arc-fail",
            "arc=neutral (body hash did not verify) smtp.remote-ip=127.0.0.1",
        ),
        (
            "arc-subject",
            "arc=fail (verification failed) smtp.remote-ip=127.0.0.1",
        ),
        ("arc-none", "arc=none smtp.remote-ip=127.0.0.1"),
    ] {
        let m = site.delivered(name);
        let ar = ours(&m);
        assert_has(&ar, &[want]);
        // The forwarder's Authentication-Results stays, below ours.
        if name != "arc-none" {
            assert_eq!(all(&m, "Authentication-Results").len(), 2, "{m}");
        }
    }
}
