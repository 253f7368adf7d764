//! Envelope addresses as ferry stores them: `local@domain` (the local part quoted as in SMTP
//! when needed), the domain in lower case. Helpers to split them and to unquote local parts.

/// Splits at the last `@`: ("local", "domain"). No `@`: the whole is the local part.
pub fn split(addr: &str) -> (&str, &str) {
    match addr.rfind('@') {
        Some(i) => (&addr[..i], &addr[i + 1..]),
        None => (addr, ""),
    }
}

/// The local part without RFC 5321 quoting: `"a b"` → `a b`, `"a\"b"` → `a"b`.
pub fn unquote_local(local: &str) -> String {
    match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        None => local.to_string(),
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut esc = false;
            for c in inner.chars() {
                if esc {
                    out.push(c);
                    esc = false;
                } else if c == '\\' {
                    esc = true;
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

/// The address with its domain in lower case (local parts keep their case).
pub fn normalize(addr: &str) -> String {
    let (l, d) = split(addr);
    if d.is_empty() {
        l.to_string()
    } else {
        format!("{l}@{}", d.to_lowercase())
    }
}

/// `name` → `name@domain`; an address with a domain is returned unchanged.
pub fn qualify(addr: &str, domain: &str) -> String {
    if addr.contains('@') || addr.is_empty() {
        addr.to_string()
    } else {
        format!("{addr}@{domain}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_unquote() {
        assert_eq!(
            split("\"user@other\"@ours.example"),
            ("\"user@other\"", "ours.example")
        );
        assert_eq!(unquote_local("\"user@other\""), "user@other");
        assert_eq!(unquote_local("\"a\\\"b\""), "a\"b");
        assert_eq!(normalize("Joe@Example.COM"), "Joe@example.com");
        assert_eq!(qualify("joe", "h.example"), "joe@h.example");
        assert_eq!(qualify("joe@x", "h.example"), "joe@x");
    }
}
