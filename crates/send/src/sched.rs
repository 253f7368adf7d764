//! The event loop of send and the state it keeps.

use crate::state::{Msg, Schedule, plural};
use ferry_common::config::Config;
use ferry_common::id::MsgId;
use ferry_common::info::Channel;
use ferry_common::queue::Queue;
use ferry_common::record::{Outbox, Reader, Record};
use ferry_common::root::Root;
use ferry_common::{date, log};
use mio::unix::SourceFd;
use mio::unix::pipe;
use mio::{Events, Interest, Poll, Token};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

const LSPAWN_IN: Token = Token(1);
const LSPAWN_OUT: Token = Token(2);
const RSPAWN_IN: Token = Token(3);
const RSPAWN_OUT: Token = Token(4);
const CLEAN_IN: Token = Token(5);
const CLEAN_OUT: Token = Token(6);
const TRIGGER: Token = Token(7);
const SIGNALS: Token = Token(8);
pub const CTL_LISTEN: Token = Token(9);
pub const FIRST_CTL_CONN: usize = 100;

/// Most new messages taken from todo/ per loop turn, so that heavy injection never starves
/// delivery.
pub const TODO_BATCH: usize = 200;
/// Most messages in hand at once; the rest waits in todo/ (like Postfix's active queue limit).
pub const MAX_ACTIVE: usize = 20_000;
/// todo/ is rescanned this often even without a trigger (a safety net).
const RESCAN: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A helper program at the other end of two pipes.
pub struct Peer {
    pub name: &'static str,
    pub tx: pipe::Sender,
    pub rx: pipe::Receiver,
    pub reader: Reader,
    pub outbox: Outbox,
}

impl Peer {
    fn open(name: &'static str, to: i32, from: i32) -> io::Result<Peer> {
        let missing = || {
            io::Error::other(format!(
                "fd {to}/{from} to {name} is not open (send is started by start)"
            ))
        };
        let tx = pipe::Sender::from(ferry_sys::take_fd(to).ok_or_else(missing)?);
        let rx = pipe::Receiver::from(ferry_sys::take_fd(from).ok_or_else(missing)?);
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok(Peer {
            name,
            tx,
            rx,
            reader: Reader::new(),
            outbox: Outbox::default(),
        })
    }
    pub fn send(&mut self, r: &Record) {
        self.outbox.push(r);
    }
}

/// A delivery handed to a spawner.
pub struct Job {
    pub msg: MsgId,
    pub rcpts: Vec<usize>,
    pub channel: Channel,
    pub domain: String,
    /// Local jobs: the user or mailbox delivered to (`U name` / `M name`), for
    /// `concurrencyuser`.
    pub user: Option<String>,
}

pub struct Scheduler {
    pub root: Root,
    pub queue: Queue,
    pub cfg: Config,
    pub poll: Poll,
    pub lspawn: Peer,
    pub rspawn: Peer,
    pub clean: Peer,
    pub mode: ferry_common::users::Mode,
    pub msgs: HashMap<MsgId, Msg>,
    /// Announced (or found) in todo/, not yet taken.
    pub new_ids: VecDeque<MsgId>,
    pub new_set: HashSet<MsgId>,
    /// todo/ entries that could not be read (logged once).
    pub broken: HashSet<MsgId>,
    /// Finished messages whose removal clean has not confirmed yet: todo/ID may still be
    /// there, and a scan must not take it again.
    pub finishing: HashSet<MsgId>,
    pub schedule: Schedule,
    pub jobs: HashMap<u64, Job>,
    pub next_job: u64,
    /// Users and mailboxes with local deliveries running (each takes one concurrencylocal
    /// slot, whatever the number of its deliveries).
    pub local_busy: usize,
    pub remote_busy: usize,
    pub remote_by_domain: HashMap<String, usize>,
    /// Local deliveries running per user or mailbox, and the ready recipients waiting
    /// because theirs is at `concurrencyuser` (in order; one moves on per finished job).
    pub local_by_user: HashMap<String, usize>,
    pub blocked_local: HashMap<String, VecDeque<(MsgId, usize)>>,
    /// Persisted messages whose info changed this turn: synced once at its end.
    pub dirty: HashSet<MsgId>,
    /// Messages whose state changed this turn: checked for completion or persistence.
    pub touched: HashSet<MsgId>,
    /// Messages deferred past `delaywarningtime` with no warning sent: warned at the end of
    /// this turn (crate::report).
    pub warn: HashSet<MsgId>,
    /// Recipients that are due, waiting for a free delivery slot.
    pub ready_local: VecDeque<(MsgId, usize)>,
    pub ready_remote: VecDeque<(MsgId, usize)>,
    /// Messages whose bounce could not be queued: finish again at that time.
    pub finish_later: BTreeSet<(u64, MsgId)>,
    pub scan_todo: bool,
    pub ctl: crate::ctl::Ctl,
    trigger: File,
    stopping: Option<Instant>,
}

impl Scheduler {
    pub fn start() -> io::Result<Scheduler> {
        let root = Root::from_exe()?;
        let cfg = Config::load(&root).map_err(|e| io::Error::other(e.to_string()))?;
        let queue = Queue::new(&root);
        let trigger = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(queue.trigger())
            .map_err(|e| {
                io::Error::other(format!("cannot open {}: {e}", queue.trigger().display()))
            })?;
        let ctl = crate::ctl::Ctl::bind(&queue.ctl_socket())?;
        Ok(Scheduler {
            poll: Poll::new()?,
            lspawn: Peer::open("lspawn", 3, 4)?,
            rspawn: Peer::open("rspawn", 5, 6)?,
            clean: Peer::open("clean", 7, 8)?,
            mode: ferry_common::users::Mode::of_root(&root),
            root,
            queue,
            cfg,
            msgs: HashMap::new(),
            new_ids: VecDeque::new(),
            new_set: HashSet::new(),
            broken: HashSet::new(),
            finishing: HashSet::new(),
            schedule: Schedule::default(),
            jobs: HashMap::new(),
            next_job: 1,
            local_busy: 0,
            remote_busy: 0,
            remote_by_domain: HashMap::new(),
            local_by_user: HashMap::new(),
            blocked_local: HashMap::new(),
            dirty: HashSet::new(),
            touched: HashSet::new(),
            warn: HashSet::new(),
            ready_local: VecDeque::new(),
            ready_remote: VecDeque::new(),
            finish_later: BTreeSet::new(),
            scan_todo: true,
            ctl,
            trigger,
            stopping: None,
        })
    }

    pub fn run(&mut self, ready_fd: Option<i32>) -> io::Result<i32> {
        let reg = self.poll.registry();
        reg.register(&mut self.lspawn.rx, LSPAWN_IN, Interest::READABLE)?;
        reg.register(&mut self.lspawn.tx, LSPAWN_OUT, Interest::WRITABLE)?;
        reg.register(&mut self.rspawn.rx, RSPAWN_IN, Interest::READABLE)?;
        reg.register(&mut self.rspawn.tx, RSPAWN_OUT, Interest::WRITABLE)?;
        reg.register(&mut self.clean.rx, CLEAN_IN, Interest::READABLE)?;
        reg.register(&mut self.clean.tx, CLEAN_OUT, Interest::WRITABLE)?;
        reg.register(
            &mut SourceFd(&self.trigger.as_raw_fd()),
            TRIGGER,
            Interest::READABLE,
        )?;
        reg.register(&mut self.ctl.listener, CTL_LISTEN, Interest::READABLE)?;
        use signal_hook::consts::{SIGALRM, SIGCHLD, SIGHUP, SIGINT, SIGTERM};
        let mut signals =
            signal_hook_mio::v1_0::Signals::new([SIGALRM, SIGCHLD, SIGHUP, SIGINT, SIGTERM])?;
        reg.register(&mut signals, SIGNALS, Interest::READABLE)?;

        self.recover()?;
        log!(
            "started: {} in the queue, {} due or scheduled",
            plural(self.msgs.len(), "message"),
            plural(self.schedule.len(), "recipient")
        );
        if let Some(fd) = ready_fd {
            ferry_sys::notify_ready(fd);
        }
        let mut events = Events::with_capacity(256);
        let mut last_scan = Instant::now();
        loop {
            let timeout = self.timeout(last_scan);
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                match ev.token() {
                    LSPAWN_IN => self.read_peer(Which::Lspawn)?,
                    RSPAWN_IN => self.read_peer(Which::Rspawn)?,
                    CLEAN_IN => self.read_peer(Which::Clean)?,
                    TRIGGER => {
                        let mut buf = vec![0u8; 64 * 1024];
                        let mut data = Vec::new();
                        while let Ok(n) = io::Read::read(&mut self.trigger, &mut buf) {
                            if n == 0 {
                                break;
                            }
                            data.extend_from_slice(&buf[..n]);
                        }
                        // A FIFO read nearly full may have refused some writers: scan too.
                        if data.len() >= 60 * 1024 {
                            self.scan_todo = true;
                        }
                        self.read_trigger(&data);
                    }
                    SIGNALS => {
                        for sig in signals.pending() {
                            match sig {
                                SIGALRM => {
                                    self.flush_all();
                                }
                                SIGHUP => {
                                    let _ = self.reload();
                                }
                                SIGTERM | SIGINT if self.stopping.is_none() => {
                                    log!(
                                        "stopping: waiting for {}",
                                        plural(self.jobs.len(), "running delivery")
                                    );
                                    self.stopping = Some(Instant::now());
                                }
                                _ => reap(),
                            }
                        }
                    }
                    CTL_LISTEN => self.ctl_accept(),
                    Token(t) if t >= FIRST_CTL_CONN => self.ctl_event(t),
                    _ => {}
                }
            }
            self.settle();
            if let Some(since) = self.stopping {
                if self.jobs.is_empty() || since.elapsed() > STOP_GRACE {
                    self.flush_peers()?;
                    log!("stopped");
                    return Ok(0);
                }
            } else {
                if self.scan_todo || last_scan.elapsed() > RESCAN {
                    last_scan = Instant::now();
                    self.scan_todo = false;
                    self.scan()?;
                }
                self.take_new();
                self.retry_finishes();
                self.dispatch();
                // Results decided without a delivery (unknown users) are recorded now.
                self.settle();
            }
            self.flush_peers()?;
        }
    }

    fn timeout(&self, last_scan: Instant) -> Duration {
        if (self.scan_todo || (!self.new_ids.is_empty() && self.msgs.len() < MAX_ACTIVE))
            && self.stopping.is_none()
        {
            return Duration::ZERO;
        }
        let mut t = RESCAN.saturating_sub(last_scan.elapsed());
        if self.stopping.is_some() {
            t = t.min(Duration::from_millis(200));
        }
        let now_ms = date::now_millis();
        let next = [
            self.schedule.first_due(),
            self.finish_later.first().map(|e| e.0),
        ];
        for due in next.into_iter().flatten() {
            t = t.min(Duration::from_millis((due * 1000).saturating_sub(now_ms)));
        }
        t
    }

    fn flush_peers(&mut self) -> io::Result<()> {
        for p in [&mut self.lspawn, &mut self.rspawn, &mut self.clean] {
            p.outbox
                .flush_to(&mut p.tx)
                .map_err(|e| io::Error::other(format!("{} is gone ({e}); stopping", p.name)))?;
        }
        Ok(())
    }

    fn read_peer(&mut self, which: Which) -> io::Result<()> {
        let peer = match which {
            Which::Lspawn => &mut self.lspawn,
            Which::Rspawn => &mut self.rspawn,
            Which::Clean => &mut self.clean,
        };
        let open = peer.reader.fill_from(&mut peer.rx)?;
        let name = peer.name;
        let mut records = Vec::new();
        while let Some(r) = peer.reader.next_record()? {
            records.push(r);
        }
        for r in records {
            match which {
                Which::Clean => self.clean_reply(r),
                _ => self.job_result(r),
            }
        }
        if !open {
            self.settle();
            return Err(io::Error::other(format!(
                "{name} exited; stopping so that s6 restarts the service"
            )));
        }
        Ok(())
    }

    /// Re-reads the control files (HUP, or `R` on the control socket); on an error the old
    /// settings stay and the error is the answer.
    pub fn reload(&mut self) -> Result<(), String> {
        match Config::load(&self.root) {
            Ok(c) => {
                self.cfg = c;
                // rspawn starts new remote-deliver workers, which read them too.
                self.rspawn.send(&Record::new(b'H'));
                log!("control files reloaded");
                Ok(())
            }
            Err(e) => {
                log!("reload refused: {e}");
                Err(e.to_string())
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Which {
    Lspawn,
    Rspawn,
    Clean,
}

/// Collects exited helpers; their pipes closing is what stops send.
fn reap() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(st) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        match st {
            WaitStatus::StillAlive => break,
            WaitStatus::Exited(pid, code) => log!("helper {pid} exited {code}"),
            WaitStatus::Signaled(pid, sig, _) => log!("helper {pid} killed by {sig:?}"),
            _ => {}
        }
    }
}

use std::os::unix::fs::OpenOptionsExt;
