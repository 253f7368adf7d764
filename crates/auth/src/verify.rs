//! Verification of a message received over SMTP: SPF of the HELO name and of the envelope
//! sender (RFC 7208), every DKIM signature (RFC 6376, RFC 8463), ARC (RFC 8617) and DMARC
//! (RFC 7489) with alignment. The result is one Authentication-Results field (RFC 8601) and
//! what the policies (`spfpolicy`, `dmarcpolicy`) make of it: accept, accept quarantined, or
//! refuse (permanently or for now).
//!
//! Every DNS lookup goes through one resolver (its cache keeps answers for their TTL); SPF is
//! bounded by mail-auth to RFC 7208 §4.6.4's limits (10 DNS-querying terms, 2 void lookups),
//! and the whole of one message's verification by [`MAX_VERIFY_TIME`] (then temperror).

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::Policy as DmarcPolicy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfOutput, SpfResult,
};
use std::net::IpAddr;
use std::time::Duration;

/// The longest one SPF evaluation or one message's DKIM/ARC/DMARC checks may take.
pub const MAX_VERIFY_TIME: Duration = Duration::from_secs(20);

pub use ferry_common::config::AuthMode as Mode;

/// Where a message came from: the SMTP client and its envelope sender.
#[derive(Clone, Debug)]
pub struct Client {
    pub ip: IpAddr,
    pub helo: String,
    /// The envelope sender; empty for the null sender.
    pub sender: String,
    /// This host: the authserv-id of Authentication-Results, and SPF's %{r}.
    pub me: String,
}

/// SPF for both identities.
#[derive(Clone, Debug)]
pub struct Spf {
    pub helo: SpfOutput,
    pub mail_from: SpfOutput,
}

/// What becomes of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Accept,
    /// Accepted, with a field saying why it should be quarantined (DMARC p=quarantine).
    Quarantine(String),
    /// Refused for good: a reply code, an enhanced status code and the text.
    Refuse(u16, &'static str, String),
    /// Refused for now (a DNS failure): 451 and the enhanced status code.
    Defer(&'static str, String),
}

/// The result of verifying one message.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// The header fields to put on top of the message (LF line ends, each field ending in
    /// LF): Authentication-Results, and X-Ferry-Quarantine when quarantined.
    pub head: String,
    pub action: Action,
    /// One line for the log: spf=... dkim=... arc=... dmarc=...
    pub summary: String,
}

/// SPF of the HELO name and of the envelope sender (RFC 7208 §2.3, §2.4; for the null sender
/// the MAIL FROM identity is postmaster@HELO).
pub async fn spf(auth: &MessageAuthenticator, c: &Client) -> Spf {
    // crate::spf adds to mail-auth's evaluation the rules it leaves out (two records, more
    // than 2 void lookups: permerror), as `ferryctl spf` reports them.
    let helo = crate::spf::evaluate(&auth.0, c.ip, &c.helo, "", &c.me)
        .await
        .output;
    let mail_from = if c.sender.is_empty() {
        helo.clone()
    } else {
        crate::spf::evaluate(&auth.0, c.ip, &c.helo, &c.sender, &c.me)
            .await
            .output
    };
    Spf { helo, mail_from }
}

fn sender_domain(sender: &str) -> &str {
    sender.rsplit_once('@').map_or(sender, |(_, d)| d)
}

/// The policies of this host.
#[derive(Clone, Copy, Debug)]
pub struct Policies {
    pub spf: Mode,
    pub dmarc: Mode,
}

/// Verifies `message` (as stored: LF or CR LF line ends) from client `c`, whose SPF is `spf`.
pub async fn verify(
    auth: &MessageAuthenticator,
    c: &Client,
    spf: &Spf,
    message: &[u8],
    policies: Policies,
) -> Verdict {
    let mut ar = AuthenticationResults::new(&c.me);
    let mut summary = Vec::new();
    let mut action = Action::Accept;
    if policies.spf != Mode::Off || policies.dmarc != Mode::Off {
        ar = ar
            .with_spf_ehlo_result(&spf.helo, c.ip, &c.helo)
            .with_spf_mailfrom_result(&spf.mail_from, c.ip, &c.sender, &c.helo);
        summary.push(format!(
            "spf={} ({})",
            crate::spf::word(spf.mail_from.result()),
            spf.mail_from.domain()
        ));
        if policies.spf == Mode::Enforce {
            action = spf_action(&spf.mail_from);
        }
    }
    let wire = crlf(message);
    let parsed = AuthenticatedMessage::parse(&wire);
    let mut quarantine = None;
    if policies.dmarc != Mode::Off {
        match &parsed {
            Some(msg) => {
                let checked = tokio::time::timeout(MAX_VERIFY_TIME, async {
                    let dkim = auth.verify_dkim(msg).await;
                    let arc = auth.verify_arc(msg).await;
                    let from_domain = msg
                        .from
                        .first()
                        .map(|f| sender_domain(f).to_ascii_lowercase())
                        .unwrap_or_default();
                    let mail_from_domain = if c.sender.is_empty() {
                        c.helo.clone()
                    } else {
                        sender_domain(&c.sender).to_string()
                    };
                    let dmarc = auth
                        .verify_dmarc(DmarcParameters::new(
                            msg,
                            &dkim,
                            &mail_from_domain,
                            &spf.mail_from,
                        ))
                        .await;
                    (dkim, arc, dmarc, from_domain)
                })
                .await;
                match checked {
                    Ok((dkim, arc, dmarc, from_domain)) => {
                        ar = ar
                            .with_dkim_results(&dkim, &from_domain)
                            .with_arc_result(&arc, c.ip)
                            .with_dmarc_result(&dmarc);
                        let dkim_words: Vec<String> = dkim
                            .iter()
                            .map(|d| {
                                format!(
                                    "{}{}",
                                    dkim_word(d.result()),
                                    d.signature()
                                        .map(|s| format!("({})", s.d))
                                        .unwrap_or_default()
                                )
                            })
                            .collect();
                        summary.push(format!(
                            "dkim={}",
                            if dkim_words.is_empty() {
                                "none".to_string()
                            } else {
                                dkim_words.join(",")
                            }
                        ));
                        summary.push(format!("arc={}", dkim_word(arc.result())));
                        let result = dmarc.result();
                        summary.push(format!(
                            "dmarc={} ({} p={})",
                            dmarc_word(&result),
                            dmarc.domain(),
                            policy_word(dmarc.policy())
                        ));
                        if policies.dmarc == Mode::Enforce && action == Action::Accept {
                            match (&result, dmarc.policy()) {
                                (DmarcResult::Fail(_), DmarcPolicy::Reject) => {
                                    action = Action::Refuse(
                                        550,
                                        "5.7.1",
                                        format!(
                                            "DMARC policy of {} rejects this message (not authenticated by SPF or DKIM aligned with the From domain)",
                                            dmarc.domain()
                                        ),
                                    );
                                }
                                (DmarcResult::Fail(_), DmarcPolicy::Quarantine) => {
                                    quarantine = Some(dmarc.domain().to_string());
                                }
                                (DmarcResult::TempError(_), _) => {
                                    action = Action::Defer(
                                        "4.7.1",
                                        format!(
                                            "DMARC of {} cannot be checked now (DNS); try again later",
                                            dmarc.domain()
                                        ),
                                    );
                                }
                                _ => {}
                            }
                        }
                    }
                    Err(_) => {
                        ar = ar.with_dkim_result(
                            &mail_auth::DkimOutput::temp_err(mail_auth::Error::Dns(
                                mail_auth::DnsError::Resolver("timed out".into()),
                            )),
                            "",
                        );
                        summary.push("dkim=temperror (timed out)".into());
                        if policies.dmarc == Mode::Enforce && action == Action::Accept {
                            action = Action::Defer(
                                "4.7.1",
                                "DKIM and DMARC checks timed out; try again later".into(),
                            );
                        }
                    }
                }
            }
            None => summary.push("dkim=permerror (message header cannot be parsed)".into()),
        }
    }
    let mut head = lf(&ar.to_header());
    if let Some(d) = &quarantine {
        head.push_str(&format!(
            "X-Ferry-Quarantine: DMARC policy of {d} is quarantine and the message failed it\n"
        ));
        action = Action::Quarantine(d.clone());
    }
    Verdict {
        head,
        action,
        summary: summary.join(" "),
    }
}

/// The refusal `spfpolicy enforce` makes of an SPF result.
fn spf_action(o: &SpfOutput) -> Action {
    match o.result() {
        SpfResult::Fail => Action::Refuse(
            550,
            "5.7.23",
            match o.explanation() {
                Some(e) => format!("SPF of {} does not allow this host: {e}", o.domain()),
                None => format!("SPF of {} does not allow this host", o.domain()),
            },
        ),
        SpfResult::TempError => Action::Defer(
            "4.7.24",
            format!(
                "SPF of {} cannot be checked now (DNS); try again later",
                o.domain()
            ),
        ),
        _ => Action::Accept,
    }
}

/// The message as it went over the wire: CR LF line ends (the queue stores LF). Simple
/// header canonicalisation (RFC 6376 §3.4.1) hashes the line ends as they are, so a
/// signature with c=simple/... made on the CR LF original fails on LF.
pub(crate) fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 2);
    let mut prev = 0u8;
    for &b in message {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// CR LF line ends (mail-auth's) as the queue stores them: LF.
fn lf(s: &str) -> String {
    s.replace("\r\n", "\n")
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

fn policy_word(p: DmarcPolicy) -> &'static str {
    match p {
        DmarcPolicy::Reject => "reject",
        DmarcPolicy::Quarantine => "quarantine",
        DmarcPolicy::None | DmarcPolicy::Unspecified => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_for_verification() {
        assert_eq!(
            crlf(b"A: b\nC: d\r\n\nbody\n"),
            b"A: b\r\nC: d\r\n\r\nbody\r\n"
        );
        assert_eq!(crlf(b""), b"");
    }

    #[test]
    fn spf_enforcement() {
        let o = |r| SpfOutput::new("example.com".into()).with_result(r);
        assert!(matches!(
            spf_action(&o(SpfResult::Fail)),
            Action::Refuse(550, "5.7.23", _)
        ));
        assert!(matches!(
            spf_action(&o(SpfResult::TempError)),
            Action::Defer("4.7.24", _)
        ));
        for r in [
            SpfResult::SoftFail,
            SpfResult::Neutral,
            SpfResult::PermError,
            SpfResult::None,
            SpfResult::Pass,
        ] {
            assert_eq!(spf_action(&o(r)), Action::Accept);
        }
    }
}
