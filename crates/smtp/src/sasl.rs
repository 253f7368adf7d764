//! SASL for SMTP AUTH (RFC 4954) without I/O: base64 (RFC 4648, strict), the PLAIN message
//! (RFC 4616: `authzid NUL authcid NUL passwd`) and the two steps of LOGIN.
//!
//! A server reads the `AUTH` line (crate::command gives the mechanism and the optional initial
//! response), then each client line of the exchange; [`Exchange`] says what to send next
//! (a `334` challenge) or gives the credentials. A line `*` cancels (the server answers 501).

/// Longest decoded credential part accepted (user name, password).
pub const MAX_PART: usize = 1024;
/// Longest base64 line accepted in an exchange.
pub const MAX_LINE: usize = 4 * MAX_PART;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Strict base64: padded to a multiple of 4, no white space, canonical padding bits.
/// None for anything else. The empty string is the empty value.
pub fn decode(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let quads = s.len() / 4;
    for (qi, q) in s.chunks(4).enumerate() {
        let pad = q.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && qi + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in q.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { value(*c)? };
            n = (n << 6) | v;
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = 3 - pad;
        // Non-canonical: bits beyond the data must be zero.
        if bytes[keep..].iter().any(|b| *b != 0) {
            return None;
        }
        out.extend_from_slice(&bytes[..keep]);
    }
    Some(out)
}

/// What the client proved it knows.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The identity to act as (PLAIN's authzid); empty: the same as `user`.
    pub authzid: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never a password in a log or a panic message.
        write!(
            f,
            "Credentials({:?}, {:?}, <hidden>)",
            self.authzid, self.user
        )
    }
}

/// Why an exchange failed; each has its RFC 4954 reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslError {
    /// Not base64 (501 5.5.2).
    BadBase64,
    /// The client sent `*` (501 5.7.0).
    Cancelled,
    /// Decoded, but not a well-formed message of the mechanism (501 5.5.2), or a part too
    /// long or not UTF-8.
    Malformed,
    /// A mechanism we do not offer (504 5.5.4).
    UnknownMechanism,
}

impl SaslError {
    pub fn reply(self) -> (u16, &'static str, &'static str) {
        match self {
            SaslError::BadBase64 => (501, "5.5.2", "Error: invalid base64 data"),
            SaslError::Cancelled => (501, "5.7.0", "Authentication cancelled"),
            SaslError::Malformed => (501, "5.5.2", "Error: malformed authentication data"),
            SaslError::UnknownMechanism => {
                (504, "5.5.4", "Error: unrecognized authentication type")
            }
        }
    }
}

/// Parses a decoded PLAIN message: `authzid NUL authcid NUL passwd`.
pub fn parse_plain(msg: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = msg.split(|b| *b == 0);
    let (Some(z), Some(u), Some(p), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if u.is_empty() || p.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        authzid: part(z)?,
        user: part(u)?,
        password: part(p)?,
    })
}

fn part(b: &[u8]) -> Result<String, SaslError> {
    if b.len() > MAX_PART {
        return Err(SaslError::Malformed);
    }
    String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed)
}

/// The mechanisms offered (over TLS only).
pub const MECHANISMS: &str = "PLAIN LOGIN";

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// PLAIN without an initial response: waiting for it.
    Plain,
    /// LOGIN: waiting for the user name.
    LoginUser,
    /// LOGIN: got the user, waiting for the password.
    LoginPassword(String),
}

/// One AUTH exchange in progress.
#[derive(Debug)]
pub struct Exchange {
    state: State,
}

/// What the server does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send `334 <challenge>` (already base64) and read the next line into [`Exchange::line`].
    Challenge(String),
    /// The exchange is complete: check these credentials.
    Done(Credentials),
}

/// `=` alone is an empty initial response (RFC 4954 §4).
fn initial_bytes(initial: &str) -> Result<Vec<u8>, SaslError> {
    if initial == "=" {
        return Ok(Vec::new());
    }
    decode(initial.as_bytes()).ok_or(SaslError::BadBase64)
}

impl Exchange {
    /// Starts `AUTH mechanism [initial]`.
    pub fn start(
        mechanism: &str,
        initial: Option<&str>,
    ) -> Result<(Option<Exchange>, Step), SaslError> {
        if initial == Some("*") {
            return Err(SaslError::Cancelled);
        }
        match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => match initial {
                Some(i) => Ok((None, Step::Done(parse_plain(&initial_bytes(i)?)?))),
                None => Ok((
                    Some(Exchange {
                        state: State::Plain,
                    }),
                    Step::Challenge(String::new()),
                )),
            },
            "LOGIN" => match initial {
                // RFC-less but common: the user name as initial response.
                Some(i) => {
                    let user = part(&initial_bytes(i)?)?;
                    if user.is_empty() {
                        return Err(SaslError::Malformed);
                    }
                    Ok((
                        Some(Exchange {
                            state: State::LoginPassword(user),
                        }),
                        Step::Challenge(encode(b"Password:")),
                    ))
                }
                None => Ok((
                    Some(Exchange {
                        state: State::LoginUser,
                    }),
                    Step::Challenge(encode(b"Username:")),
                )),
            },
            _ => Err(SaslError::UnknownMechanism),
        }
    }

    /// The client's next line (without CR LF). Returns the next step; Some(self) again when
    /// another line is needed.
    pub fn line(self, line: &[u8]) -> Result<(Option<Exchange>, Step), SaslError> {
        if line == b"*" {
            return Err(SaslError::Cancelled);
        }
        if line.len() > MAX_LINE {
            return Err(SaslError::Malformed);
        }
        let data = decode(line).ok_or(SaslError::BadBase64)?;
        match self.state {
            State::Plain => Ok((None, Step::Done(parse_plain(&data)?))),
            State::LoginUser => {
                let user = part(&data)?;
                if user.is_empty() {
                    return Err(SaslError::Malformed);
                }
                Ok((
                    Some(Exchange {
                        state: State::LoginPassword(user),
                    }),
                    Step::Challenge(encode(b"Password:")),
                ))
            }
            State::LoginPassword(user) => {
                let password = part(&data)?;
                if password.is_empty() {
                    return Err(SaslError::Malformed);
                }
                Ok((
                    None,
                    Step::Done(Credentials {
                        authzid: String::new(),
                        user,
                        password,
                    }),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base64_vectors() {
        // RFC 4648 §10.
        for (plain, b64) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), b64);
            assert_eq!(decode(b64.as_bytes()).as_deref(), Some(plain.as_bytes()));
        }
        for bad in [
            "Zg",
            "Zg=",
            "Z===",
            "Zh==",
            "Zm9v Yg==",
            "Zg==Zg==",
            "Zm9*",
            "====",
        ] {
            assert_eq!(decode(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn plain_messages() {
        let c = parse_plain(b"\0bob\0secret").unwrap();
        assert_eq!(
            (c.authzid.as_str(), c.user.as_str(), c.password.as_str()),
            ("", "bob", "secret")
        );
        let c = parse_plain(b"alice\0bob\0pw").unwrap();
        assert_eq!(c.authzid, "alice");
        for bad in [
            &b"bob\0secret"[..],
            b"\0\0pw",
            b"\0bob\0",
            b"a\0b\0c\0d",
            b"\0b\xff\0c",
        ] {
            assert_eq!(parse_plain(bad), Err(SaslError::Malformed));
        }
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn exchanges() {
        let plain = encode(b"\0bob\0secret");
        let (ex, step) = Exchange::start("plain", Some(&plain)).unwrap();
        assert!(ex.is_none());
        assert!(matches!(step, Step::Done(c) if c.user == "bob" && c.password == "secret"));

        let (ex, step) = Exchange::start("PLAIN", None).unwrap();
        assert_eq!(step, Step::Challenge(String::new()));
        let (_, step) = ex.unwrap().line(plain.as_bytes()).unwrap();
        assert!(matches!(step, Step::Done(c) if c.user == "bob"));

        let (ex, step) = Exchange::start("LOGIN", None).unwrap();
        assert_eq!(step, Step::Challenge("VXNlcm5hbWU6".into()));
        let (ex, step) = ex.unwrap().line(encode(b"bob").as_bytes()).unwrap();
        assert_eq!(step, Step::Challenge("UGFzc3dvcmQ6".into()));
        let (ex, step) = ex.unwrap().line(encode(b"secret").as_bytes()).unwrap();
        assert!(ex.is_none());
        assert!(matches!(step, Step::Done(c) if c.user == "bob" && c.password == "secret"));

        let (ex, _) = Exchange::start("LOGIN", None).unwrap();
        assert_eq!(ex.unwrap().line(b"*").unwrap_err(), SaslError::Cancelled);
        let (ex, _) = Exchange::start("LOGIN", None).unwrap();
        assert_eq!(
            ex.unwrap().line(b"not base64!").unwrap_err(),
            SaslError::BadBase64
        );
        assert_eq!(
            Exchange::start("CRAM-MD5", None).unwrap_err(),
            SaslError::UnknownMechanism
        );
        assert_eq!(
            Exchange::start("PLAIN", Some("*")).unwrap_err(),
            SaslError::Cancelled
        );
        assert_eq!(
            Exchange::start("PLAIN", Some("%%%%")).unwrap_err(),
            SaslError::BadBase64
        );
        assert_eq!(
            Exchange::start("PLAIN", Some("=")).unwrap_err(),
            SaslError::Malformed
        );
    }

    proptest! {
        #[test]
        fn base64_round_trips(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(decode(encode(&data).as_bytes()), Some(data));
        }

        #[test]
        fn decode_never_panics(s in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(d) = decode(&s) {
                let e = encode(&d);
                prop_assert_eq!(e.as_bytes(), &s[..]);
            }
        }

        #[test]
        fn plain_round_trips(z in "[a-z@.]{0,20}", u in "[a-z@.]{1,20}", p in "[ -~]{1,40}") {
            let msg = format!("{z}\0{u}\0{p}");
            let c = parse_plain(msg.as_bytes()).unwrap();
            prop_assert_eq!((c.authzid, c.user, c.password), (z, u, p));
        }
    }
}
