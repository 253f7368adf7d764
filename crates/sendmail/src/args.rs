//! The sendmail command line, parsed like Postfix and qmail do: getopt-style clusters
//! (`-ti`, `-fuser`, `-f user`), the options that matter, and every other historic option
//! accepted and ignored so that old scripts keep working.

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub extract: bool,
    pub ignore_dots: bool,
    pub sender: Option<String>,
    pub fullname: Option<String>,
    pub mode: Mode,
    pub recipients: Vec<String>,
    /// -N: the NOTIFY of every recipient (never, or success,failure,delay).
    pub notify: Option<String>,
    /// -R: RET (full or hdrs).
    pub ret: Option<String>,
    /// -V: ENVID.
    pub envid: Option<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Send,
    /// -bp: list the queue (mailq).
    ListQueue,
    /// -bs: SMTP on stdin/stdout.
    Smtp,
    /// -bi, -I: rebuild aliases (nothing to do in ferry).
    NewAliases,
    /// -q: run the queue now.
    Flush,
    /// -bd, -bv, ...: modes ferry does not offer.
    Unsupported(String),
}

/// Options that take a value (attached or as the next argument).
const WITH_VALUE: &[char] = &[
    'f', 'F', 'r', 'B', 'N', 'R', 'V', 'X', 'C', 'L', 'O', 'h', 'p', 'A', 'o', 'b',
];

pub fn parse(argv: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        if arg == "--" {
            a.recipients.extend(argv[i..].iter().cloned());
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            a.recipients.push(arg.clone());
            continue;
        }
        for (pos, c) in arg[1..].char_indices() {
            if c == 'q' {
                a.mode = Mode::Flush;
                break;
            }
            if c == 'I' {
                a.mode = Mode::NewAliases;
                continue;
            }
            if !WITH_VALUE.contains(&c) {
                match c {
                    't' => a.extract = true,
                    'i' => a.ignore_dots = true,
                    // -v -m -n -U -G -S -M -d ...: accepted and ignored.
                    _ => {}
                }
                continue;
            }
            let rest = &arg[1 + pos + c.len_utf8()..];
            let value = if !rest.is_empty() {
                rest.to_string()
            } else if i < argv.len() {
                i += 1;
                argv[i - 1].clone()
            } else {
                return Err(format!("option -{c} needs a value"));
            };
            match c {
                'f' | 'r' => a.sender = Some(value),
                'F' => a.fullname = Some(value),
                'N' => a.notify = Some(value),
                'R' => a.ret = Some(value),
                'V' => a.envid = Some(value),
                'o' if value.starts_with('i') => a.ignore_dots = true,
                'b' => {
                    a.mode = match value.as_str() {
                        "p" => Mode::ListQueue,
                        "s" => Mode::Smtp,
                        "i" => Mode::NewAliases,
                        "m" => Mode::Send,
                        other => Mode::Unsupported(format!("-b{other}")),
                    }
                }
                _ => {}
            }
            break;
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Args {
        parse(&s.split_whitespace().map(String::from).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn common_callers() {
        // mutt
        let a = p("-oem -oi -- joe@x.example ann@y.example");
        assert!(a.ignore_dots);
        assert_eq!(a.recipients, vec!["joe@x.example", "ann@y.example"]);
        // cron
        let a = p("-FCronDaemon -i -B8BITMIME -oem root");
        assert_eq!(a.fullname.as_deref(), Some("CronDaemon"));
        assert_eq!(a.recipients, vec!["root"]);
        // PHP, git send-email
        let a = p("-t -i -f me@x.example");
        assert!(a.extract && a.ignore_dots);
        assert_eq!(a.sender.as_deref(), Some("me@x.example"));
        assert!(p("-ti").extract);
        assert_eq!(p("-bp").mode, Mode::ListQueue);
        assert_eq!(p("-q").mode, Mode::Flush);
        assert_eq!(p("-bd").mode, Mode::Unsupported("-bd".into()));
        assert!(parse(&["-f".to_string()]).is_err());
        assert_eq!(p("-fme@x -v joe").sender.as_deref(), Some("me@x"));
    }
}
