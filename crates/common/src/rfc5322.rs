//! Just enough RFC 5322 for sendmail and the tests: split a header section into fields, and
//! pull the addresses out of an address-list header (To, Cc, Bcc), with display names,
//! comments, quoted strings, angle addresses and groups.

/// The header fields of a message: (name, raw value with continuation lines joined by "\n"),
/// and the byte length of the header section including the blank line (if any).
pub fn fields(header: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(header);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push('\n');
                last.1.push_str(line);
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim().to_string(), value.to_string()));
        }
    }
    out
}

/// Is this line the start of a header field (`Name:` with printable name characters)?
pub fn is_field_line(line: &[u8]) -> bool {
    match line.iter().position(|b| *b == b':') {
        Some(0) | None => false,
        Some(i) => line[..i]
            .iter()
            .all(|b| (33..=126).contains(b) && *b != b':'),
    }
}

/// The addresses in an address-list value: `"A, B" <a@x>, b@y (c), G: c@z, d@w;`.
pub fn addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new(); // the text of the current mailbox outside comments
    let mut angle: Option<String> = None;
    let mut in_angle = false;
    let mut chars = value.chars().peekable();
    let flush = |cur: &mut String, angle: &mut Option<String>, out: &mut Vec<String>| {
        let a = match angle.take() {
            Some(a) => a,
            None => cur.split_whitespace().collect::<Vec<_>>().join(""),
        };
        let a = a.trim().to_string();
        if !a.is_empty() && a.contains(|c: char| c.is_alphanumeric()) {
            out.push(a);
        }
        cur.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut q = String::from('"');
                while let Some(c) = chars.next() {
                    q.push(c);
                    if c == '\\' {
                        if let Some(n) = chars.next() {
                            q.push(n);
                        }
                    } else if c == '"' {
                        break;
                    }
                }
                if in_angle {
                    angle.get_or_insert_with(String::new).push_str(&q);
                } else {
                    cur.push_str(&q);
                }
            }
            '(' => {
                let mut depth = 1;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                cur.push(' ');
            }
            '<' => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' => in_angle = false,
            ':' if !in_angle => cur.clear(), // a group's display name
            ',' | ';' if !in_angle => flush(&mut cur, &mut angle, &mut out),
            c if in_angle => {
                if !c.is_whitespace() {
                    angle.get_or_insert_with(String::new).push(c);
                }
            }
            c => cur.push(c),
        }
    }
    flush(&mut cur, &mut angle, &mut out);
    // A source route inside angle brackets (<@a,@b:x@y>) keeps only the mailbox.
    out.into_iter()
        .map(|a| {
            a.rsplit_once(':')
                .filter(|(r, _)| r.starts_with('@'))
                .map(|(_, m)| m.to_string())
                .unwrap_or(a)
        })
        .collect()
}

/// Is `head` nothing but complete header fields: each line `Name: value` or a continuation
/// (starting with a space or a tab) of the one before, every line ended by LF, no empty line,
/// no NUL or CR, and not longer than `max`? What a helper adds on top of a message must be.
pub fn is_field_block(head: &[u8], max: usize) -> bool {
    if head.len() > max || (!head.is_empty() && !head.ends_with(b"\n")) {
        return false;
    }
    let mut first = true;
    for line in head.split_inclusive(|b| *b == b'\n') {
        let line = &line[..line.len() - 1];
        if line.iter().any(|b| *b == 0 || *b == b'\r') {
            return false;
        }
        let cont = line.starts_with(b" ") || line.starts_with(b"\t");
        if (cont && first) || (!cont && !is_field_line(line)) || line.trim_ascii().is_empty() {
            return false;
        }
        first = false;
    }
    true
}

/// Is this header field an Authentication-Results field claiming to be from `me`? Such
/// fields arriving from outside are forgeries (RFC 8601 §5) and are removed on receipt.
/// `field` is the whole field, name and value, unfolded or not.
pub fn claims_authserv_id(field: &[u8], me: &str) -> bool {
    let Some(colon) = field.iter().position(|b| *b == b':') else {
        return false;
    };
    if !field[..colon]
        .trim_ascii()
        .eq_ignore_ascii_case(b"authentication-results")
    {
        return false;
    }
    // The authserv-id: the first token of the value, after comments (RFC 8601 §2.2).
    let value = String::from_utf8_lossy(&field[colon + 1..]);
    let mut v = value.trim_start();
    while let Some(rest) = v.strip_prefix('(') {
        v = rest.split_once(')').map_or("", |(_, r)| r).trim_start();
    }
    let id: String = v
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ';' && *c != '(')
        .collect();
    id.trim_end_matches('.')
        .eq_ignore_ascii_case(me.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_blocks() {
        assert!(is_field_block(b"", 10));
        assert!(is_field_block(b"A-R: x;\n\tspf=pass\nX-Y: z\n", 100));
        assert!(!is_field_block(b"A-R: x", 100));
        assert!(!is_field_block(b"A-R: x\n\nbody\n", 100));
        assert!(!is_field_block(b"\tcont first\n", 100));
        assert!(!is_field_block(b"not a field\n", 100));
        assert!(!is_field_block(b"A: x\r\n", 100));
        assert!(!is_field_block(b"A: x\n", 3));
    }

    #[test]
    fn authserv_id_claims() {
        let me = "mx.example.com";
        assert!(claims_authserv_id(
            b"Authentication-Results: mx.example.com; spf=pass",
            me
        ));
        assert!(claims_authserv_id(
            b"authentication-results:\n\t(forged) MX.Example.Com ; dkim=pass",
            me
        ));
        assert!(claims_authserv_id(
            b"Authentication-Results: mx.example.com",
            me
        ));
        assert!(!claims_authserv_id(
            b"Authentication-Results: mx.other.net; spf=pass",
            me
        ));
        assert!(!claims_authserv_id(
            b"Authentication-Results: mx.example.com.evil; spf=pass",
            me
        ));
        assert!(!claims_authserv_id(b"Received: mx.example.com", me));
    }

    #[test]
    fn address_lists() {
        assert_eq!(addresses(" a@x.example"), vec!["a@x.example"]);
        assert_eq!(
            addresses(" \"Doe, John\" <john@x.example>, b@y.example (Bob, B.), Ann <ann@z>"),
            vec!["john@x.example", "b@y.example", "ann@z"]
        );
        assert_eq!(
            addresses(" team: c@z.example, d@w.example;, e@v"),
            vec!["c@z.example", "d@w.example", "e@v"]
        );
        assert_eq!(addresses(" undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(addresses(" <\"a b\"@x>"), vec!["\"a b\"@x"]);
    }

    #[test]
    fn header_fields() {
        let f = fields(b"To: a@x,\n b@y\nSubject: hi\n\nbody: no\n");
        assert_eq!(f.len(), 2);
        assert_eq!(f[0], ("To".to_string(), " a@x,\n b@y".to_string()));
        assert!(is_field_line(b"X-Thing: 1"));
        assert!(!is_field_line(b"not a header"));
        assert!(!is_field_line(b": empty name"));
    }
}
