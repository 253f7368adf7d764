//! `ferryctl setup DOMAIN`: the first-run wizard. Writes me, defaultdomain, locals and
//! rcpthosts (saying old → new when it replaces one), a self-signed certificate when there is
//! none, the postmaster/root/abuse/mailer-daemon aliases (added, never changed), and prints
//! the DNS records to publish (A, MX, SPF, DMARC, PTR, and DKIM: the record of each key in
//! control/dkim, or how to make one), and how to let mail clients in (the first user with
//! `ferryctl passwd NAME`, then `ferryctl start` for the submission services). `--dry-run`
//! writes nothing.
//!
//! `me` is the host's name (gethostname, then `hostname -f`) when it is DOMAIN or inside it,
//! else `mail.DOMAIN`; `--me HOST` decides instead.

use crate::{problem, tls, usage};
use anyhow::{Context, Result};
use ferry_common::config;
use ferry_common::control;
use ferry_common::root::Root;
use std::net::{IpAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

pub struct Opts {
    pub domain: String,
    pub admin: Option<String>,
    pub me: Option<String>,
    pub ip: Option<IpAddr>,
    pub dry_run: bool,
}

const ALIASES: &[&str] = &["postmaster", "root", "abuse", "mailer-daemon"];

/// The host's own names: gethostname and `hostname -f` (which may ask DNS: 3 s at most).
fn host_names() -> Vec<String> {
    let mut v = vec![ferry_sys::hostname().to_ascii_lowercase()];
    if let Ok(o) = crate::run::run(Command::new("hostname").arg("-f"), Duration::from_secs(3))
        && o.ok()
    {
        v.push(o.stdout.trim().to_ascii_lowercase());
    }
    v
}

/// `me` for DOMAIN: a host name inside DOMAIN, else mail.DOMAIN.
pub fn pick_me(domain: &str, names: &[String]) -> String {
    names
        .iter()
        .find(|n| *n == domain || n.ends_with(&format!(".{domain}")))
        .cloned()
        .unwrap_or_else(|| format!("mail.{domain}"))
}

/// The address this host uses to reach the Internet (no packet is sent), for the A record.
fn local_address(v6: bool) -> Option<IpAddr> {
    let (bind, peer) = if v6 {
        ("[::]:0", "[2001:db8::1]:25")
    } else {
        ("0.0.0.0:0", "192.0.2.1:25")
    };
    let s = UdpSocket::bind(bind).ok()?;
    s.connect(peer).ok()?;
    s.local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            // 100.64.0.0/10 is carrier-grade NAT: not reachable from outside either.
            let cgnat = a.octets()[0] == 100 && (a.octets()[1] & 0xc0) == 64;
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_documentation()
                || cgnat)
        }
        IpAddr::V6(a) => {
            let doc = a.segments()[0] == 0x2001 && a.segments()[1] == 0x0db8;
            !(a.is_loopback() || a.is_unique_local() || a.is_unicast_link_local() || doc)
        }
    }
}

/// The meaningful lines of a control file, or None when it is missing or unreadable.
fn current(root: &Root, name: &str) -> Option<Vec<String>> {
    control::read_lines(&root.control(), name)
        .ok()
        .flatten()
        .map(|v| v.into_iter().map(|(_, l)| l).collect())
}

/// The old value for the report: its lines, or why it has none.
fn old_value(root: &Root, name: &str) -> Option<String> {
    match control::read_lines(&root.control(), name) {
        Ok(Some(v)) => Some(v.into_iter().map(|(_, l)| l).collect::<Vec<_>>().join(", ")),
        Ok(None) => None,
        Err(e) => Some(format!("[{}]", e.message)),
    }
}

/// Replaces a file by rename, so that a reader sees the old or the new contents.
fn write_file(root: &Root, name: &str, text: &str) -> Result<()> {
    let path = root.control_file(name);
    let tmp = root.control_file(&format!(".{name}.new"));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))
}

fn set_value(
    root: &Root,
    name: &str,
    values: &[String],
    dry: bool,
    out: &mut Vec<String>,
) -> Result<()> {
    let shown = values.join(", ");
    let verb = if dry { "would write" } else { "wrote" };
    match old_value(root, name) {
        Some(old) if old == shown => out.push(format!("control/{name}: {shown} (unchanged)")),
        Some(old) => {
            let old = if old.is_empty() {
                "(empty)".to_string()
            } else {
                old
            };
            out.push(format!(
                "control/{name}: {old} → {shown} ({})",
                if dry { "would replace" } else { "replaced" }
            ));
            if !dry {
                write_file(root, name, &format!("{}\n", values.join("\n")))?;
            }
        }
        None => {
            out.push(format!("control/{name}: {shown} ({verb})"));
            if !dry {
                write_file(root, name, &format!("{}\n", values.join("\n")))?;
            }
        }
    }
    Ok(())
}

/// Who gets postmaster's mail: --admin, else the invoking user (not root).
fn admin_target(opts: &Opts) -> Result<Option<String>> {
    let a = match &opts.admin {
        Some(a) => a.trim().to_string(),
        None if ferry_sys::running_as_root() => return Ok(None),
        None => match nix::unistd::User::from_uid(nix::unistd::getuid()) {
            Ok(Some(u)) => u.name,
            _ => return Ok(None),
        },
    };
    if let Some((local, domain)) = a.split_once('@') {
        if local.is_empty()
            || config::parse_domain(domain).is_err()
            || a.chars().any(|c| c.is_whitespace() || c == ',')
        {
            return Err(usage(format!(
                "--admin {a:?} is not an address (user@example.net) or a user name"
            )));
        }
        return Ok(Some(a));
    }
    if !config::is_user_name(&a) {
        return Err(usage(format!(
            "--admin {a:?} is not an address (user@example.net) or a user name"
        )));
    }
    match nix::unistd::User::from_name(&a) {
        Ok(Some(u)) if u.uid.is_root() => Err(usage(
            "root gets no mail directly: give --admin a user name or an address (--admin you@example.net)".to_string(),
        )),
        Ok(Some(_)) => Ok(Some(a)),
        _ => Err(usage(format!("there is no user {a} on this host: create it, or give an address (--admin {a}@example.net)"))),
    }
}

fn aliases(root: &Root, opts: &Opts, out: &mut Vec<String>) -> Result<()> {
    let Some(target) = admin_target(opts)? else {
        out.push(format!(
            "control/aliases: none added: postmaster, root, abuse and mailer-daemon go to the mailbox {} (built in); --admin USER sends them to a person",
            root.mail().join("postmaster/Maildir/").display()
        ));
        return Ok(());
    };
    let old = current(root, "aliases").unwrap_or_default();
    let existing = |name: &str| {
        old.iter().find_map(|l| {
            let (n, t) = l.split_once(':')?;
            (n.trim().eq_ignore_ascii_case(name)).then(|| t.trim().to_string())
        })
    };
    let mut add = Vec::new();
    for name in ALIASES {
        match existing(name) {
            Some(t) => out.push(format!("control/aliases: {name} → {t} already, kept")),
            None => add.push(format!("{name}: {target}")),
        }
    }
    if add.is_empty() {
        return Ok(());
    }
    let verb = if opts.dry_run { "would add" } else { "added" };
    out.push(format!(
        "control/aliases: {verb} {} → {target}",
        add.iter()
            .filter_map(|l| l.split(':').next())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if !opts.dry_run {
        let mut text = std::fs::read_to_string(root.control_file("aliases")).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for l in add {
            text.push_str(&l);
            text.push('\n');
        }
        write_file(root, "aliases", &text)?;
    }
    Ok(())
}

fn dns_records(root: &Root, domain: &str, me: &str, opts: &Opts, out: &mut Vec<String>) {
    let addrs: Vec<IpAddr> = match opts.ip {
        Some(ip) => vec![ip],
        None => [local_address(false), local_address(true)]
            .into_iter()
            .flatten()
            .collect(),
    };
    out.push(String::new());
    out.push(format!(
        "DNS records to publish for {domain} (then run ferryctl check):"
    ));
    if addrs.is_empty() {
        out.push(format!(
            "  {me}.  IN A      YOUR.PUBLIC.ADDRESS   (no address found here: give --ip ADDRESS)"
        ));
    }
    for ip in &addrs {
        let t = if ip.is_ipv4() { "A   " } else { "AAAA" };
        let note = if is_public(*ip) {
            ""
        } else if opts.ip.is_some() {
            "   (not a public address: other servers cannot reach it)"
        } else {
            "   (not a public address: publish your public one, or give --ip)"
        };
        out.push(format!("  {me}.  IN {t}    {ip}{note}"));
    }
    out.push(format!("  {domain}.  IN MX    10 {me}."));
    out.push(format!("  {domain}.  IN TXT   \"v=spf1 mx -all\""));
    out.push(format!(
        "  _dmarc.{domain}.  IN TXT   \"v=DMARC1; p=none; rua=mailto:postmaster@{domain}\""
    ));
    for ip in &addrs {
        out.push(format!(
            "  PTR of {ip} → {me}.   (set by whoever runs the address: your hosting provider)"
        ));
    }
    out.extend(crate::dkim::setup_lines(root, domain));
}

/// How to let mail clients in: the first user, then the submission services.
fn submission(root: &Root, me: &str, domain: &str, dry_run: bool, out: &mut Vec<String>) {
    let ctl = root.bin("ferryctl");
    let ctl = ctl.display();
    out.push(String::new());
    out.push("Mail clients (submission with SMTP AUTH; docs/OPERATIONS.md):".into());
    match crate::passwd::list(root) {
        Ok(names) if !names.is_empty() => out.push(format!(
            "  users: {} already (add more with {ctl} passwd NAME)",
            names.len()
        )),
        _ => out.push(format!(
            "  add the first user: {ctl} passwd NAME   (NAME: a local user, or an address like you@{domain} in a virtual domain; it asks for the password)"
        )),
    }
    out.push(format!(
        "  then: {ctl} start   (brings up submission on port 587, STARTTLS, and smtps on 465, TLS, once a certificate and a password exist; {ctl} stat shows them)"
    ));
    // (A dry run has not written the certificate it would write.)
    if let Some(why) = crate::s6::not_configured(root).filter(|_| !dry_run) {
        out.push(format!("  not configured yet: {why}"));
    }
    out.push(format!(
        "  in the client: server {me}, port 587 with STARTTLS (or 465 with SSL/TLS), user name NAME, normal password"
    ));
}

pub fn run(root: &Root, opts: &Opts) -> Result<Vec<String>> {
    let domain = config::parse_domain(&opts.domain).map_err(usage)?;
    if !domain.contains('.') {
        return Err(usage(format!(
            "{domain:?} is not a mail domain: give one like example.org"
        )));
    }
    if !root.control().is_dir() {
        return Err(problem(format!(
            "{} is missing: run {} init first",
            root.control().display(),
            root.bin("ferryctl").display()
        )));
    }
    let me = match &opts.me {
        Some(m) => config::parse_domain(m).map_err(|e| usage(format!("--me: {e}")))?,
        None => pick_me(&domain, &host_names()),
    };
    let mut out = Vec::new();
    if opts.dry_run {
        out.push("dry run: nothing is written".into());
    }
    let mut locals = vec![domain.clone()];
    if me != domain {
        locals.push(me.clone());
    }
    // rcpthosts keeps the virtual domains smtpd already accepts mail for.
    let mut rcpthosts = locals.clone();
    for v in current(root, "virtualdomains").unwrap_or_default() {
        if let Some(d) = v.split(':').next().map(|d| d.trim().to_ascii_lowercase())
            && !d.is_empty()
            && !rcpthosts.contains(&d)
        {
            rcpthosts.push(d);
        }
    }
    set_value(
        root,
        "me",
        std::slice::from_ref(&me),
        opts.dry_run,
        &mut out,
    )?;
    set_value(
        root,
        "defaultdomain",
        std::slice::from_ref(&domain),
        opts.dry_run,
        &mut out,
    )?;
    set_value(root, "locals", &locals, opts.dry_run, &mut out)?;
    set_value(root, "rcpthosts", &rcpthosts, opts.dry_run, &mut out)?;
    out.push(match tls::ensure(root, &me, opts.dry_run)? {
        tls::Outcome::Written => format!(
            "control/tlscert, control/tlskey: a self-signed certificate for {me} (wrote; replace them with a CA's when you have one, then ferryctl reload)"
        ),
        tls::Outcome::WouldWrite => format!("control/tlscert, control/tlskey: a self-signed certificate for {me} (would write)"),
        tls::Outcome::Present => "control/tlscert, control/tlskey: kept (already there)".into(),
        tls::Outcome::Partial(why) => why,
    });
    if !root.control_file("srssecret").exists() {
        out.push(if opts.dry_run {
            "control/srssecret: a random key for SRS addresses (would write)".into()
        } else {
            crate::init::write_srs_secret(root, ferry_common::users::Mode::of_root(root))?;
            "control/srssecret: a random key for SRS addresses (wrote)".into()
        });
    }
    aliases(root, opts, &mut out)?;
    dns_records(root, &domain, &me, opts, &mut out);
    submission(root, &me, &domain, opts.dry_run, &mut out);
    out.push(String::new());
    if !opts.dry_run {
        out.push("next: ferryctl reload (or ferryctl start), then ferryctl check".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn me_is_the_host_when_inside_the_domain() {
        let names = vec!["vm".to_string(), "mx1.example.org".to_string()];
        assert_eq!(pick_me("example.org", &names), "mx1.example.org");
        assert_eq!(pick_me("example.net", &names), "mail.example.net");
        assert_eq!(
            pick_me("example.org", &["example.org".to_string()]),
            "example.org"
        );
        assert_eq!(pick_me("ample.org", &names), "mail.ample.org");
    }

    #[test]
    fn public_addresses() {
        assert!(is_public("203.0.114.5".parse().unwrap()));
        assert!(!is_public("10.1.2.3".parse().unwrap()));
        assert!(!is_public("fd00::1".parse().unwrap()));
        assert!(is_public("2a01:4f8::1".parse().unwrap()));
    }
}
