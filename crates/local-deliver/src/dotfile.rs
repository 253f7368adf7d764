//! Delivery instructions: the `.ferry` files of qmail's `.qmail` (docs/DELIVERY.md).
//!
//! One instruction a line: `./Maildir/` or `/path/Maildir/` (a Maildir: ends with `/`),
//! `./mbox` or `/path/mbox` (an mbox file), `&address` (forward; a line starting with a letter
//! or digit is an address too), `|command` (run with the message on stdin). `#` starts a
//! comment. A line that is none of these is an error, reported with the file and line; the
//! delivery is then retried later (111), so that fixing the file loses nothing.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    Maildir(String),
    Mbox(String),
    Forward(String),
    Program(String),
}

/// Parses a delivery file. Err: (line number, what is wrong).
pub fn parse(text: &str) -> Result<Vec<Instruction>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        let n = i + 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let ins = if let Some(cmd) = line.strip_prefix('|') {
            if cmd.trim().is_empty() {
                return Err((n, "| with no command".into()));
            }
            Instruction::Program(cmd.to_string())
        } else if line.starts_with('/') || line.starts_with("./") {
            if line.contains("/../") || line.ends_with("/..") {
                return Err((n, format!("path with ..: {line:?}")));
            }
            if line.ends_with('/') {
                Instruction::Maildir(line.to_string())
            } else {
                Instruction::Mbox(line.to_string())
            }
        } else {
            let a = line.strip_prefix('&').unwrap_or(line).trim();
            if a.is_empty()
                || a.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
            {
                return Err((n, format!("not an address to forward to: {line:?}")));
            }
            if !a
                .chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '"' || c == '_' || c == '.')
                && !line.starts_with('&')
            {
                return Err((n, format!("not a delivery instruction: {line:?}")));
            }
            Instruction::Forward(a.to_string())
        };
        out.push(ins);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Instruction::*;

    #[test]
    fn lines() {
        let t = "# mine\n./Maildir/\n./mbox\n&ann@example.org\nbob@example.net\n|/usr/bin/true x\n/var/mail/joe\n";
        assert_eq!(
            parse(t).unwrap(),
            vec![
                Maildir("./Maildir/".into()),
                Mbox("./mbox".into()),
                Forward("ann@example.org".into()),
                Forward("bob@example.net".into()),
                Program("/usr/bin/true x".into()),
                Mbox("/var/mail/joe".into())
            ]
        );
        assert_eq!(parse("./Maildir/\n|\n").unwrap_err().0, 2);
        assert!(parse("& \n").is_err());
        assert!(parse("!weird\n").is_err());
        assert!(parse("./../x/\n").is_err());
        assert!(parse("&a b@c\n").is_err());
    }
}
