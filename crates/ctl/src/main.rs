//! ferryctl — the one tool to run ferry: start, stop, inspect, set up.
//!
//! Usage: `ferryctl COMMAND [ARGS]`; `ferryctl help` and `ferryctl COMMAND --help` explain each.
//! Works on the root it is installed in (the parent of its bin/ directory). Reads the queue
//! directly but never changes it: queue actions are requests to send over queue/ctl/send.
//! Exit codes: 0 success; 1 the command ran and found a problem (check FAIL, service down);
//! 2 bad usage; 111 a temporary failure (send not running, cannot read the queue).

mod ctlsock;
mod init;
mod queuecmd;
mod users;

use anyhow::Result;
use ferry_common::queue::Queue;
use ferry_common::record::Record;
use ferry_common::root::Root;

struct Command {
    name: &'static str,
    usage: &'static str,
    help: &'static str,
}

const COMMANDS: &[Command] = &[
    Command { name: "init", usage: "init [--demo PORT]", help: "Lay out this root: the ferry users (as root), queue and control directories with their owners and modes, the s6 service directories. --demo PORT also writes the demo configuration of `make run` (never overwrites)." },
    Command { name: "queue", usage: "queue [show ID | delete ID | hold ID | release ID]", help: "List queued messages (id, age, size, sender, recipients, state; recipients and last error indented), or act on one. delete removes it without a bounce; hold stops retries until release." },
    Command { name: "flush", usage: "flush", help: "Retry every deferred message now." },
];

fn usage() -> String {
    let mut s = String::from("usage: ferryctl COMMAND [ARGS]\n\ncommands:\n");
    for c in COMMANDS {
        s.push_str(&format!("  {:<44} {}\n", c.usage, c.help.split(". ").next().unwrap_or("")));
    }
    s.push_str("\nferryctl COMMAND --help explains one command.\n");
    s
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().map(String::as_str) else {
        eprint!("{}", usage());
        std::process::exit(2);
    };
    if matches!(cmd, "help" | "-h" | "--help") {
        print!("{}", usage());
        return;
    }
    let Some(c) = COMMANDS.iter().find(|c| c.name == cmd) else {
        eprintln!("ferryctl: unknown command {cmd:?}\n\n{}", usage());
        std::process::exit(2);
    };
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: ferryctl {}\n\n{}", c.usage, c.help);
        return;
    }
    let root = match Root::from_exe() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferryctl: {e}");
            std::process::exit(111);
        }
    };
    let code = match run(&root, cmd, &args[1..]) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferryctl {cmd}: {e:#}");
            111
        }
    };
    std::process::exit(code);
}

fn bad_usage(cmd: &str) -> Result<i32> {
    let c = COMMANDS.iter().find(|c| c.name == cmd);
    eprintln!("usage: ferryctl {}", c.map(|c| c.usage).unwrap_or(cmd));
    Ok(2)
}

fn run(root: &Root, cmd: &str, args: &[String]) -> Result<i32> {
    let q = Queue::new(root);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match (cmd, a.as_slice()) {
        ("init", []) => print_lines(init::run(root, None)?),
        ("init", ["--demo", port]) => match port.parse::<u16>() {
            Ok(p) => print_lines(init::run(root, Some(p))?),
            Err(_) => bad_usage(cmd),
        },
        ("queue", []) => {
            print!("{}", queuecmd::list(&q)?);
            Ok(0)
        }
        ("queue", ["show", id]) => {
            print!("{}", queuecmd::show(&q, id)?);
            Ok(0)
        }
        ("queue", [act @ ("delete" | "hold" | "release"), id]) => {
            let kind = match *act {
                "delete" => b'D',
                "hold" => b'H',
                _ => b'U',
            };
            println!("{}", queuecmd::action(&q, kind, id)?);
            Ok(0)
        }
        ("flush", []) => {
            println!("{}", ctlsock::request(&q, Record::new(b'F'))?);
            Ok(0)
        }
        _ => bad_usage(cmd),
    }
}

fn print_lines(lines: Vec<String>) -> Result<i32> {
    for l in lines {
        println!("{l}");
    }
    Ok(0)
}
