//! The typed settings, read from the control files of [`crate::control::FILES`].
//!
//! Every program loads the whole [`Config`] at start (and on HUP where it reloads): it is a
//! few dozen small files. A malformed file makes [`Config::load`] fail with the file's name
//! and line; [`Config::check`] collects every problem for `ferryctl check`.

use crate::control::{self, ControlError, Kind};
use crate::root::Root;
use crate::srs::Srs;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VirtualTarget {
    /// `domain:user`: x@domain is delivered as `user` with extension `x` (qmail).
    User(String),
    /// `domain:mail/` or `domain:mail/*`: x@domain is the mailbox `mail/x/`.
    Mailboxes { catch_all: bool },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualDomain {
    pub domain: String,
    pub target: VirtualTarget,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr = canonical_ip(
            a.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()?,
        );
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (::ffff:1.2.3.4) as the IPv4 address it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Lowercase domain; empty for the default route (`:host`).
    pub domain: String,
    /// Host name or `[ip]`.
    pub host: String,
    pub port: Option<u16>,
}

/// The window of `authfailures`.
pub const AUTH_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Clone, Debug)]
pub struct Config {
    pub me: String,
    pub defaultdomain: String,
    pub locals: Vec<String>,
    pub virtualdomains: Vec<VirtualDomain>,
    /// Key: a lowercase local part (valid in every local domain) or a full lowercase address.
    pub aliases: HashMap<String, Vec<String>>,
    pub rcpthosts: Vec<String>,
    pub relayclients: Vec<Cidr>,
    pub badmailfrom: Vec<String>,
    pub badrcptto: Vec<String>,
    pub databytes: u64,
    pub maxrcpt: u64,
    pub maxhops: u64,
    pub smtplisten: Vec<SocketAddr>,
    /// `smtpd -submission` (port 587) and `smtpd -smtps` (465).
    pub submissionlisten: Vec<SocketAddr>,
    pub smtpslisten: Vec<SocketAddr>,
    /// Extra envelope senders of authenticated names: (lowercase address or `@domain`, name).
    pub senders: Vec<(String, String)>,
    /// qmail's checkpassword interface: a program and its arguments (empty: none), asked by
    /// smtpd's checker for names that are not in control/passwords.
    pub checkpassword: Vec<String>,
    /// Failed AUTHs per client address and per name (in [`AUTH_WINDOW`]) before AUTH is refused.
    pub authfailures: u64,
    /// `submissionreceived`: the Received line of authenticated mail shows the client's
    /// address and HELO name (`full`, false) or neither (`hide`, true).
    pub submission_hides_client: bool,
    /// SRS for forwarded mail (crate::srs): `srssecret` and `srsdomain`; None when there is
    /// no secret, or when this program may not read it (only ferryq and the group ferry may).
    pub srs: Option<Srs>,
    /// `spfpolicy` and `dmarcpolicy`: off, mark or enforce (crates/auth/src/verify.rs).
    pub spfpolicy: AuthMode,
    pub dmarcpolicy: AuthMode,
    pub smtpgreeting: String,
    pub timeoutsmtpd: u64,
    pub concurrencyincoming: u64,
    pub concurrencyperip: u64,
    /// Paths of the PEM files, when they exist.
    pub tlscert: Option<PathBuf>,
    pub tlskey: Option<PathBuf>,
    pub concurrencylocal: u64,
    pub concurrencyremote: u64,
    pub concurrencydomain: u64,
    pub concurrencyuser: u64,
    pub queuelifetime: u64,
    /// Seconds in the queue after which a deferred message's sender is warned (0: never).
    pub delaywarningtime: u64,
    /// The HTTPS port of `mta-sts.DOMAIN` (443; another only for tests).
    pub mtastsport: u16,
    /// Seconds one TLS report (RFC 8460) covers: a day; less only for tests.
    pub tlsrptperiod: u64,
    pub bouncefrom: String,
    pub doublebounceto: String,
    pub defaultdelivery: String,
    pub smtproutes: Vec<Route>,
    pub remoteport: u16,
    pub resolvconf: Vec<SocketAddr>,
    pub helohost: String,
    pub timeoutconnect: u64,
    pub timeoutremote: u64,
    pub tlsdestinations: Vec<String>,
    /// Extra trust anchors for tlsdestinations.
    pub tlsca: Option<PathBuf>,
}

struct Loader<'a> {
    dir: &'a Path,
    errors: Vec<ControlError>,
}

/// What `spfpolicy` / `dmarcpolicy` ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    Off,
    Mark,
    Enforce,
}

impl AuthMode {
    pub fn name(self) -> &'static str {
        match self {
            AuthMode::Off => "off",
            AuthMode::Mark => "mark",
            AuthMode::Enforce => "enforce",
        }
    }
    pub fn parse(s: &str) -> Option<AuthMode> {
        match s {
            "off" => Some(AuthMode::Off),
            "mark" => Some(AuthMode::Mark),
            "enforce" => Some(AuthMode::Enforce),
            _ => None,
        }
    }
}

impl Loader<'_> {
    fn auth_mode(&mut self, name: &str) -> AuthMode {
        match self.text(name) {
            None => AuthMode::Mark,
            Some(t) => AuthMode::parse(&t).unwrap_or_else(|| {
                self.errors.push(ControlError::new(
                    name,
                    Some(1),
                    format!("expected off, mark or enforce, not {t:?}"),
                ));
                AuthMode::Mark
            }),
        }
    }

    /// `srssecret` (skipped when this program may not read it) and `srsdomain`: by default
    /// `me` when that is a domain of ours, else the first local or virtual domain.
    fn srs(&mut self, me: &str, locals: &[String], virt: &[VirtualDomain]) -> Option<Srs> {
        let ours = |d: &str| locals.iter().any(|l| l == d) || virt.iter().any(|v| v.domain == d);
        let domain = match self.text("srsdomain").map(|d| d.to_ascii_lowercase()) {
            Some(d) if ours(&d) => d,
            Some(d) => {
                self.errors.push(ControlError::new(
                    "srsdomain",
                    Some(1),
                    format!("{d} is not a domain of ours (locals or virtualdomains): bounces to its SRS addresses would not come here"),
                ));
                return None;
            }
            None if ours(me) => me.to_string(),
            None => locals
                .first()
                .cloned()
                .or_else(|| virt.first().map(|v| v.domain.clone()))
                .unwrap_or_else(|| me.to_string()),
        };
        let secret = match control::read_text(self.dir, "srssecret") {
            Ok(s) => s?,
            Err(_) if !readable(&self.dir.join("srssecret")) => return None,
            Err(e) => {
                self.errors.push(e);
                return None;
            }
        };
        if secret.len() < 16 {
            self.errors.push(ControlError::new(
                "srssecret",
                Some(1),
                "is shorter than 16 characters: make a new one with ferryctl init",
            ));
            return None;
        }
        Some(Srs::new(secret.as_bytes(), &domain))
    }

    fn number(&mut self, name: &str, default: u64) -> u64 {
        control::read_number(self.dir, name, default).unwrap_or_else(|e| {
            self.errors.push(e);
            default
        })
    }
    /// A TCP port (1-65535); anything else is named as an error and the default used.
    fn port(&mut self, name: &str, default: u16) -> u16 {
        let p = self.number(name, u64::from(default));
        u16::try_from(p).ok().filter(|p| *p > 0).unwrap_or_else(|| {
            self.errors
                .push(ControlError::new(name, Some(1), format!("not a port: {p}")));
            default
        })
    }
    fn text(&mut self, name: &str) -> Option<String> {
        match control::read_text(self.dir, name) {
            Ok(v) => v,
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }
    /// A list, each entry checked by `parse` (which returns the parsed item or a message).
    fn list<T>(&mut self, name: &str, parse: impl Fn(&str) -> Result<T, String>) -> Option<Vec<T>> {
        let lines = match control::read_list(self.dir, name) {
            Ok(l) => l?,
            Err(e) => {
                self.errors.push(e);
                return None;
            }
        };
        let mut out = Vec::new();
        for (n, l) in lines {
            match parse(&l) {
                Ok(v) => out.push(v),
                Err(m) => self.errors.push(ControlError::new(name, Some(n), m)),
            }
        }
        Some(out)
    }
    fn pem(&mut self, name: &str) -> Option<PathBuf> {
        let p = self.dir.join(name);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Some(p),
            Ok(_) => {
                self.errors
                    .push(ControlError::new(name, None, "is not a regular file"));
                None
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            // A key in a directory only root may enter (certbot's live/): it is there, and
            // smtpd's root helper reads it (crates/smtpd/src/tlskeys.rs).
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(p),
            Err(e) => {
                self.errors
                    .push(ControlError::new(name, None, format!("cannot read: {e}")));
                None
            }
        }
    }
}

/// May this program open the file for reading? (srssecret is kept from most ferry users.)
fn readable(path: &Path) -> bool {
    !matches!(std::fs::File::open(path), Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

pub fn parse_domain(s: &str) -> Result<String, String> {
    let d = s.to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 255
        && !d.ends_with('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        });
    if ok {
        Ok(d)
    } else {
        Err(format!("not a domain name: {s:?}"))
    }
}

fn parse_virtual(s: &str) -> Result<VirtualDomain, String> {
    let (d, t) = s
        .split_once(':')
        .ok_or_else(|| format!("expected domain:target, got {s:?}"))?;
    let domain = parse_domain(d.trim())?;
    let t = t.trim();
    let target = match t {
        "mail/" => VirtualTarget::Mailboxes { catch_all: false },
        "mail/*" => VirtualTarget::Mailboxes { catch_all: true },
        u if is_user_name(u) => VirtualTarget::User(u.to_string()),
        _ => {
            return Err(format!(
                "target must be a user name, mail/ or mail/*, got {t:?}"
            ));
        }
    };
    Ok(VirtualDomain { domain, target })
}

pub fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn parse_alias(s: &str) -> Result<(String, Vec<String>), String> {
    let (name, targets) = s
        .split_once(':')
        .ok_or_else(|| format!("expected name: target, got {s:?}"))?;
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == ',') {
        return Err(format!("bad alias name {name:?}"));
    }
    let targets: Vec<String> = targets
        .split(',')
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        return Err(format!("alias {name} has no target"));
    }
    for t in &targets {
        if t.chars()
            .any(|c| c.is_whitespace() || c == '<' || c == '>' || c == '|' || c == '"')
            || t.starts_with('/')
        {
            return Err(format!(
                "alias target {t:?} must be an address or a user name"
            ));
        }
    }
    Ok((name, targets))
}

fn parse_route(s: &str) -> Result<Route, String> {
    let (d, rest) = s
        .split_once(':')
        .ok_or_else(|| format!("expected domain:host[:port], got {s:?}"))?;
    let domain = if d.is_empty() {
        String::new()
    } else {
        parse_domain(d)?
    };
    let (host, port) = split_host_port(rest)?;
    if host.is_empty() {
        return Err(format!("route for {d:?} has no host"));
    }
    Ok(Route { domain, host, port })
}

/// `host`, `host:port`, `[ip]`, `[ip]:port`.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(r) = s.strip_prefix('[') {
        let (ip, after) = r
            .split_once(']')
            .ok_or_else(|| format!("unbalanced [ in {s:?}"))?;
        ip.parse::<IpAddr>()
            .map_err(|_| format!("bad address literal {ip:?}"))?;
        (format!("[{ip}]"), after.strip_prefix(':'))
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        // A bare address (qmail's syntax; IPv6 only without a port, else use [ip]:port).
        (format!("[{ip}]"), None)
    } else {
        let (h, p) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        match h.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => (format!("[{ip}]"), p),
            Err(_) => (parse_domain(h)?, p),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?),
        None => None,
    };
    Ok((host, port))
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("expected address:port (IPv6 as [::]:25), got {s:?}"))
}

/// `address: name` (control/senders).
fn parse_sender(s: &str) -> Result<(String, String), String> {
    let (a, n) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected address: name, got {s:?}"))?;
    let (a, n) = (a.trim().to_lowercase(), n.trim().to_string());
    if a.is_empty()
        || n.is_empty()
        || a.contains(char::is_whitespace)
        || n.contains(char::is_whitespace)
    {
        return Err(format!("expected address: name, got {s:?}"));
    }
    Ok((a, n))
}

fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("expected ip or ip:port (IPv6 as [::1]:53), got {s:?}"))
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    Cidr::parse(s).ok_or_else(|| format!("not an address or CIDR: {s:?}"))
}

fn parse_entry(s: &str) -> Result<String, String> {
    Ok(s.to_lowercase())
}

impl Config {
    /// Reads every control file; the first malformed one is the error.
    pub fn load(root: &Root) -> Result<Config, ControlError> {
        let (cfg, mut errors) = Self::load_all(root);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(errors.remove(0))
        }
    }

    /// Every problem in the control directory: malformed files and unknown names.
    pub fn check(root: &Root) -> Vec<ControlError> {
        let (_, mut errors) = Self::load_all(root);
        if let Ok(rd) = std::fs::read_dir(root.control()) {
            let mut names: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                if n.starts_with('.')
                    || n == "README"
                    || n.ends_with('~')
                    || n == "tls"
                    || n == "dkim"
                {
                    continue;
                }
                if control::lookup(&n).is_none() {
                    errors.push(ControlError::new(
                        &n,
                        None,
                        "unknown control file (misspelt? see control/README)",
                    ));
                }
            }
        }
        errors
    }

    fn load_all(root: &Root) -> (Config, Vec<ControlError>) {
        let dir = root.control();
        let mut l = Loader {
            dir: &dir,
            errors: Vec::new(),
        };
        let me = l
            .text("me")
            .unwrap_or_else(ferry_sys::hostname)
            .to_ascii_lowercase();
        let defaultdomain = l
            .text("defaultdomain")
            .map(|d| d.to_ascii_lowercase())
            .unwrap_or_else(|| me.clone());
        let locals = l
            .list("locals", parse_domain)
            .unwrap_or_else(|| vec![me.clone()]);
        let virtualdomains = l.list("virtualdomains", parse_virtual).unwrap_or_default();
        let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in l.list("aliases", parse_alias).unwrap_or_default() {
            aliases.entry(k).or_default().extend(v);
        }
        let rcpthosts = l.list("rcpthosts", parse_domain).unwrap_or_else(|| {
            let mut v = locals.clone();
            v.extend(virtualdomains.iter().map(|d| d.domain.clone()));
            v
        });
        let relayclients = l.list("relayclients", parse_cidr).unwrap_or_else(|| {
            ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect()
        });
        let srs = l.srs(&me, &locals, &virtualdomains);
        let cfg = Config {
            defaultdomain,
            locals,
            virtualdomains,
            aliases,
            rcpthosts,
            relayclients,
            badmailfrom: l.list("badmailfrom", parse_entry).unwrap_or_default(),
            badrcptto: l.list("badrcptto", parse_entry).unwrap_or_default(),
            databytes: l.number("databytes", 26_214_400),
            maxrcpt: l.number("maxrcpt", 1000).max(1),
            maxhops: l.number("maxhops", 100).max(1),
            smtplisten: l.list("smtplisten", parse_listen).unwrap_or_else(|| {
                ["0.0.0.0:25", "[::]:25"]
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect()
            }),
            submissionlisten: l.list("submissionlisten", parse_listen).unwrap_or_else(|| {
                ["0.0.0.0:587", "[::]:587"]
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect()
            }),
            smtpslisten: l.list("smtpslisten", parse_listen).unwrap_or_else(|| {
                ["0.0.0.0:465", "[::]:465"]
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect()
            }),
            senders: l.list("senders", parse_sender).unwrap_or_default(),
            authfailures: l.number("authfailures", 5).max(1),
            submission_hides_client: match l.text("submissionreceived").as_deref() {
                None | Some("full") => false,
                Some("hide") => true,
                Some(other) => {
                    l.errors.push(ControlError::new(
                        "submissionreceived",
                        Some(1),
                        format!("expected full or hide, not {other:?}"),
                    ));
                    false
                }
            },
            srs,
            spfpolicy: l.auth_mode("spfpolicy"),
            dmarcpolicy: l.auth_mode("dmarcpolicy"),
            checkpassword: l
                .text("checkpassword")
                .map(|t| t.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            smtpgreeting: l.text("smtpgreeting").unwrap_or_else(|| me.clone()),
            timeoutsmtpd: l.number("timeoutsmtpd", 300).max(1),
            concurrencyincoming: l.number("concurrencyincoming", 1000).max(1),
            concurrencyperip: l.number("concurrencyperip", 30).max(1),
            tlscert: l.pem("tlscert"),
            tlskey: l.pem("tlskey"),
            concurrencylocal: l.number("concurrencylocal", 10).clamp(1, 1000),
            concurrencyremote: l.number("concurrencyremote", 40).clamp(1, 10000),
            concurrencydomain: l.number("concurrencydomain", 20).max(1),
            concurrencyuser: l.number("concurrencyuser", 16).max(1),
            queuelifetime: l.number("queuelifetime", 604_800),
            delaywarningtime: l.number("delaywarningtime", 14_400),
            bouncefrom: l
                .text("bouncefrom")
                .unwrap_or_else(|| "MAILER-DAEMON".into()),
            doublebounceto: l
                .text("doublebounceto")
                .unwrap_or_else(|| "postmaster".into()),
            defaultdelivery: l
                .text("defaultdelivery")
                .unwrap_or_else(|| "./Maildir/".into()),
            smtproutes: l.list("smtproutes", parse_route).unwrap_or_default(),
            remoteport: l.port("remoteport", 25),
            mtastsport: l.port("mtastsport", 443),
            tlsrptperiod: l.number("tlsrptperiod", 86_400).max(1),
            resolvconf: l.list("resolvconf", parse_nameserver).unwrap_or_default(),
            helohost: l.text("helohost").unwrap_or_else(|| me.clone()),
            timeoutconnect: l.number("timeoutconnect", 30).max(1),
            timeoutremote: l.number("timeoutremote", 300).max(1),
            tlsdestinations: l.list("tlsdestinations", parse_domain).unwrap_or_default(),
            tlsca: l.pem("tlsca"),
            me,
        };
        // Kinds not covered above are checked here so that a new table entry is never unread.
        debug_assert!(
            control::FILES
                .iter()
                .all(|f| f.kind != Kind::Pem || f.name.starts_with("tls"))
        );
        (cfg, l.errors)
    }

    /// The envelope sender of mail forwarded to another domain (an alias in send, a
    /// `&address` forward in queue): rewritten by SRS when there is a secret, unless it is
    /// null or in a domain of ours, whose SPF record already names this host.
    pub fn forward_sender(&self, sender: &str) -> String {
        let domain = crate::addr::split(sender).1.to_lowercase();
        match &self.srs {
            Some(srs) if !sender.is_empty() && !self.is_ours(&domain) => {
                srs.forward(sender, crate::date::now_secs())
            }
            _ => sender.to_string(),
        }
    }

    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.locals.iter().any(|d| d == domain)
    }

    pub fn virtual_domain(&self, domain: &str) -> Option<&VirtualDomain> {
        self.virtualdomains.iter().find(|v| v.domain == domain)
    }

    /// Mail for this domain is delivered here (local users, mailboxes, or a virtual user).
    pub fn is_ours(&self, domain: &str) -> bool {
        self.is_local_domain(domain) || self.virtual_domain(domain).is_some()
    }

    pub fn is_rcpthost(&self, domain: &str) -> bool {
        self.rcpthosts.iter().any(|d| d == domain)
    }

    pub fn is_relay_client(&self, ip: IpAddr) -> bool {
        self.relayclients.iter().any(|c| c.contains(ip))
    }

    /// The route for a domain from `smtproutes`: an exact entry, else the default route.
    pub fn route_for(&self, domain: &str) -> Option<&Route> {
        self.smtproutes
            .iter()
            .find(|r| r.domain == domain)
            .or_else(|| self.smtproutes.iter().find(|r| r.domain.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Root) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("control")).unwrap();
        for (n, v) in files {
            std::fs::write(d.path().join("control").join(n), v).unwrap();
        }
        let r = Root::at(d.path());
        (d, r)
    }

    #[test]
    fn defaults() {
        let (_d, r) = root_with(&[("me", "mx.example.org\n")]);
        let c = Config::load(&r).unwrap();
        assert_eq!(c.me, "mx.example.org");
        assert_eq!(c.locals, vec!["mx.example.org"]);
        assert_eq!(c.rcpthosts, vec!["mx.example.org"]);
        assert_eq!(c.databytes, 26_214_400);
        assert!(c.is_relay_client("127.0.0.1".parse().unwrap()));
        assert!(c.is_relay_client("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!c.is_relay_client("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn submissionreceived_is_full_or_hide() {
        let (_d, r) = root_with(&[]);
        assert!(!Config::load(&r).unwrap().submission_hides_client);
        let (_d, r) = root_with(&[("submissionreceived", "hide\n")]);
        assert!(Config::load(&r).unwrap().submission_hides_client);
        let (_d, r) = root_with(&[("submissionreceived", "hidden\n")]);
        let e = Config::check(&r);
        assert!(
            e.iter()
                .any(|e| e.to_string().contains("submissionreceived")
                    && e.to_string().contains("expected full or hide")),
            "{e:?}"
        );
    }

    #[test]
    fn virtual_domains_aliases_routes() {
        let (_d, r) = root_with(&[
            ("me", "h.example"),
            ("locals", ""),
            (
                "virtualdomains",
                "localhost:mail/*\nExample.COM:joe\nexample.net:mail/\n",
            ),
            (
                "aliases",
                "postmaster: joe, ann@example.net\nroot: postmaster\n",
            ),
            (
                "smtproutes",
                "relay.test:[127.0.0.1]:2599\nbare.test:127.0.0.1:2610\nv6.test:2001:db8::1\nplain.test:192.0.2.1\n:smarthost.example:587\n",
            ),
        ]);
        let c = Config::load(&r).unwrap();
        assert!(c.locals.is_empty());
        assert_eq!(c.rcpthosts, vec!["localhost", "example.com", "example.net"]);
        assert_eq!(
            c.virtual_domain("example.com").unwrap().target,
            VirtualTarget::User("joe".into())
        );
        assert_eq!(c.aliases["postmaster"], vec!["joe", "ann@example.net"]);
        let rt = c.route_for("relay.test").unwrap();
        assert_eq!((rt.host.as_str(), rt.port), ("[127.0.0.1]", Some(2599)));
        assert_eq!(c.route_for("other.org").unwrap().host, "smarthost.example");
        // qmail's bare addresses are addresses, not host names to look up.
        let rt = c.route_for("bare.test").unwrap();
        assert_eq!((rt.host.as_str(), rt.port), ("[127.0.0.1]", Some(2610)));
        let rt = c.route_for("v6.test").unwrap();
        assert_eq!((rt.host.as_str(), rt.port), ("[2001:db8::1]", None));
        let rt = c.route_for("plain.test").unwrap();
        assert_eq!((rt.host.as_str(), rt.port), ("[192.0.2.1]", None));
    }

    #[test]
    fn errors_name_file_and_line() {
        let (_d, r) = root_with(&[
            ("virtualdomains", "ok.example:mail/\nbad\n"),
            ("bogus", "x"),
        ]);
        let e = Config::load(&r).unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("virtualdomains", Some(2)));
        let all = Config::check(&r);
        assert!(all.iter().any(|e| e.file == "bogus"));
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains("2001:db8::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
    }
}
