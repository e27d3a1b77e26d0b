//! The control socket: binding (or taking systemd's), the accept loop and per-connection
//! reader/writer tasks. A client that sends garbage gets a `failed` reply and stays
//! connected; a client that does not read its replies is disconnected, never waited for;
//! a client that holds a connection without a job in flight is closed after
//! `daemon.idle_timeout_s`, and over `daemon.max_connections` a few connections are still
//! answered one `status` or `presets` request, so the daemon can always be asked.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::control::replier::Replier;
use crate::protocol::{
    max_line_bytes, parse_line, Envelope, ProtocolError, Reply, ReplyTo, Request,
};

/// Replies buffered per connection before a non-reading client is dropped.
pub const REPLY_QUEUE: usize = 256;
/// Connections over `max_connections` answered at once (one `status`/`presets` each);
/// more are refused at once.
pub const SPARE_CONNECTIONS: usize = 4;
/// How long a connection over the limit has to send its one request.
pub const SPARE_READ_DEADLINE: Duration = Duration::from_secs(2);
/// The longest request line read on a connection over the limit (a status is ~20 bytes).
const SPARE_LINE_BYTES: usize = 1024;
/// How long a connection over the limit waits for the scheduler's answer.
const SPARE_ANSWER: Duration = Duration::from_secs(2);
/// How long a refused connection is given to read the refusal.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);
/// How long a refused connection's input is drained before closing, and at most how much.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
const REFUSAL_DRAIN_BYTES: usize = 256 * 1024;

/// What the control socket allows each client (from `[daemon]` and `[speech]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (`daemon.max_connections`).
    pub max_connections: usize,
    /// A connection without a job in flight is closed after this long without a complete
    /// request or a reply (`daemon.idle_timeout_s`); `None` = never.
    pub idle_timeout: Option<Duration>,
    /// `speech.max_text_chars`, from which the longest request line is derived.
    pub max_text_chars: usize,
}

impl Limits {
    /// The longest request line, newline excluded.
    pub fn max_line_bytes(&self) -> usize {
        max_line_bytes(self.max_text_chars)
    }

    fn too_many(&self) -> Reply {
        let max = self.max_connections;
        Reply::Error {
            reason: format!(
                "too many connections ({max} open; daemon.max_connections = {max}): try again \
                 later (over the limit, a connection is answered one status or presets request)"
            ),
        }
    }
}

/// Errors setting up the control socket; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another daemon answers on the socket.
    #[error(
        "another herald is already serving on {path} (stop it first, or set daemon.socket_path)"
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Creating, binding or preparing the socket failed.
    #[error("control socket {path}: cannot {op}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Something other than a socket is at the path; it is left alone.
    #[error(
        "control socket {path}: {kind} is in the way (herald only replaces a stale socket); \
         move or delete it, or set daemon.socket_path to another path"
    )]
    NotASocket {
        /// The socket path.
        path: PathBuf,
        /// What is there: "a regular file", "a directory", "a symbolic link", ...
        kind: &'static str,
    },
    /// `socket_group` names no group.
    #[error("control socket {path}: unknown group '{group}' (daemon.socket_group must name a group in /etc/group, or be \"\")")]
    NoGroup {
        /// The socket path.
        path: PathBuf,
        /// The group name.
        group: String,
    },
}

/// What is at the control socket's path.
#[derive(Debug)]
pub enum SocketPath {
    /// Nothing.
    Free,
    /// A socket a daemon answers on.
    Live,
    /// A socket nobody answers on (its daemon crashed): `serve` replaces it.
    Stale,
    /// Something that is not a socket ("a regular file", "a directory", ...): left alone.
    Other(&'static str),
    /// It could not be examined.
    Unknown(io::Error),
}

impl SocketPath {
    /// Looks at `path` without following a symbolic link.
    pub fn inspect(path: &Path) -> SocketPath {
        use std::os::unix::fs::FileTypeExt;
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return SocketPath::Free,
            Err(e) => return SocketPath::Unknown(e),
        };
        let t = meta.file_type();
        if !t.is_socket() {
            return SocketPath::Other(if t.is_file() {
                "a regular file"
            } else if t.is_dir() {
                "a directory"
            } else if t.is_symlink() {
                "a symbolic link"
            } else if t.is_fifo() {
                "a FIFO"
            } else {
                "a device file"
            });
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => SocketPath::Live,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => SocketPath::Stale,
            Err(e) => SocketPath::Unknown(e),
        }
    }
}

/// Binds the control socket at `path` (creating its directory), replacing a stale socket
/// but refusing one a live daemon answers on and anything that is not a socket; then
/// applies `mode` and `group`.
pub fn bind(path: &Path, mode: u32, group: &str) -> Result<StdUnixListener, ServerError> {
    let io_err = |op, source| ServerError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err("create its directory", e))?;
    }
    match SocketPath::inspect(path) {
        SocketPath::Free => {}
        SocketPath::Live => {
            return Err(ServerError::InUse {
                path: path.to_path_buf(),
            })
        }
        SocketPath::Stale => {
            tracing::info!(path = %path.display(), "replacing a stale control socket");
            std::fs::remove_file(path).map_err(|e| io_err("remove the stale socket", e))?;
        }
        SocketPath::Other(kind) => {
            return Err(ServerError::NotASocket {
                path: path.to_path_buf(),
                kind,
            })
        }
        SocketPath::Unknown(e) => return Err(io_err("check the existing file", e)),
    }
    let listener = StdUnixListener::bind(path).map_err(|e| io_err("bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("set its mode", e))?;
    if !group.is_empty() {
        let gid = group_id(group).ok_or_else(|| ServerError::NoGroup {
            path: path.to_path_buf(),
            group: group.to_string(),
        })?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| io_err("set its group", e))?;
    }
    Ok(listener)
}

/// Looks a group up by name (or takes a numeric gid).
fn group_id(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `group` is plain old data; all-zero is a valid value that getgrnam_r overwrites.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; getgrnam_r writes only into grp/buf/out.
    let rc =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// Serves connections on `listener`, handing every request line to `requests`, until
/// `stop` turns true; then stops accepting and returns once every connection has sent its
/// jobs' last replies.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<Envelope>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let live = Arc::new(AtomicUsize::new(0));
    let spare = Arc::new(AtomicUsize::new(0));
    let mut next_conn: u64 = 0;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!("accept on the control socket failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_conn += 1;
        let conn = next_conn;
        if live.load(Ordering::SeqCst) >= limits.max_connections {
            let max_connections = limits.max_connections;
            if spare.load(Ordering::SeqCst) >= SPARE_CONNECTIONS {
                tracing::warn!(conn, max_connections, "too many connections; refusing one");
                conns.spawn(refuse(stream, limits.too_many()));
                continue;
            }
            tracing::info!(
                conn,
                max_connections,
                "too many connections; this one may ask one status or presets request"
            );
            spare.fetch_add(1, Ordering::SeqCst);
            let spare = spare.clone();
            let requests = requests.clone();
            conns.spawn(async move {
                over_the_limit(stream, conn, requests, limits).await;
                spare.fetch_sub(1, Ordering::SeqCst);
            });
            continue;
        }
        live.fetch_add(1, Ordering::SeqCst);
        let live = live.clone();
        let requests = requests.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            connection(stream, conn, requests, limits, stop).await;
            live.fetch_sub(1, Ordering::SeqCst);
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Writes `reply` to a connection that is not served and closes it.
async fn refuse(stream: UnixStream, reply: Reply) {
    let (read, write) = stream.into_split();
    close_with(BufReader::new(read), write, reply).await;
}

/// Writes `reply`, closes the connection for writing and drains its input for a moment.
async fn close_with(
    mut read: BufReader<OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    reply: Reply,
) {
    let line = reply.to_line();
    let _ = tokio::time::timeout(REFUSAL_WRITE, write.write_all(line.as_bytes())).await;
    let _ = write.shutdown().await;
    // Lingering close: a client that writes its request before reading (`echo … | socat`)
    // would otherwise get EPIPE instead of the reason. Bounded in time and bytes.
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// A connection over `max_connections`: its first request is answered if it is a
/// read-only `status` or `presets` (so the daemon can always be asked what it is doing),
/// anything else gets the "too many connections" error; then it is closed.
async fn over_the_limit(
    stream: UnixStream,
    conn: u64,
    requests: mpsc::Sender<Envelope>,
    limits: Limits,
) {
    let (read, write) = stream.into_split();
    let mut lines = LineReader::new(read, SPARE_LINE_BYTES);
    let first = tokio::time::timeout(SPARE_READ_DEADLINE, async {
        loop {
            match lines.next_line().await {
                Ok(Line::Complete) if lines.is_blank() => continue,
                Ok(Line::Complete) => return Some(parse_line(lines.line())),
                _ => return None,
            }
        }
    })
    .await;
    let reply = match first {
        Ok(Some(Ok(req @ (Request::Status | Request::Presets)))) => ask(conn, req, &requests)
            .await
            .unwrap_or_else(|| Reply::Error {
                reason: format!(
                    "the daemon did not answer within {} s; try again",
                    SPARE_ANSWER.as_secs()
                ),
            }),
        _ => limits.too_many(),
    };
    close_with(lines.into_inner(), write, reply).await;
}

/// Hands one request to the scheduler and waits (bounded) for its first reply.
async fn ask(conn: u64, req: Request, requests: &mpsc::Sender<Envelope>) -> Option<Reply> {
    let (tx, mut rx) = mpsc::channel::<Reply>(4);
    let replier: Arc<dyn ReplyTo> = Arc::new(Replier::new(conn, tx, Arc::new(Notify::new())));
    let envelope = Envelope {
        req: Ok(req),
        reply: replier,
    };
    requests.send(envelope).await.ok()?;
    tokio::time::timeout(SPARE_ANSWER, rx.recv())
        .await
        .ok()
        .flatten()
}

async fn connection(
    stream: UnixStream,
    conn: u64,
    requests: mpsc::Sender<Envelope>,
    limits: Limits,
    stop: watch::Receiver<bool>,
) {
    tracing::debug!(conn, "client connected");
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Reply>(REPLY_QUEUE);
    let kill = Arc::new(Notify::new());
    let replier = Arc::new(Replier::new(conn, tx, kill.clone()));

    let writer_kill = kill.clone();
    let writer = tokio::spawn(async move {
        loop {
            let reply = tokio::select! {
                r = rx.recv() => r,
                _ = writer_kill.notified() => None,
            };
            let Some(reply) = reply else { break };
            let line = reply.to_line();
            let write = write.write_all(line.as_bytes());
            let ok = tokio::select! {
                r = write => r.is_ok(),
                _ = writer_kill.notified() => false,
            };
            if !ok {
                break;
            }
        }
        let _ = write.shutdown().await;
        // Replies still queued will never be read: log the job ends among them (later ones
        // are logged by the sender, as the channel is closed now).
        rx.close();
        while let Ok(r) = rx.try_recv() {
            if r.is_terminal() {
                tracing::info!(
                    conn,
                    "client disconnected before: {}",
                    r.to_line().trim_end()
                );
            }
        }
        // Wake the reader too.
        writer_kill.notify_one();
    });

    let lines = LineReader::new(read, limits.max_line_bytes());
    let reader = read_requests(lines, conn, &requests, replier, limits, kill.clone(), stop);
    reader.await;
    // The reader is done (EOF, error or kill): the writer finishes sending what jobs of
    // this connection still report, until they all ended and dropped their repliers.
    let _ = writer.await;
    tracing::debug!(conn, "client disconnected");
}

/// Reads request lines and hands them on until EOF, an error, a kill, shutdown or the
/// idle timeout.
async fn read_requests(
    mut lines: LineReader,
    conn: u64,
    requests: &mpsc::Sender<Envelope>,
    replier: Arc<Replier>,
    limits: Limits,
    kill: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    // The last complete request line; with the replier's last reply it dates the idle time.
    // Bytes of an unfinished line do not count, so a line trickling in cannot hold the
    // connection open.
    let mut last_request = Instant::now();
    let mut wake = limits.idle_timeout.map(|t| last_request + t);
    loop {
        let got = tokio::select! {
            r = lines.next_line() => r,
            _ = kill.notified() => {
                // Let the writer see it too.
                kill.notify_one();
                return;
            }
            _ = stop.wait_for(|s| *s) => return,
            _ = sleep_until(wake), if wake.is_some() => {
                let Some(idle) = limits.idle_timeout else { continue };
                let now = Instant::now();
                // Every request handed on holds a clone of the replier until it is
                // answered, and every job until its terminal reply: a connection waiting
                // for its job (minutes, for a long announcement) is not idle.
                if Arc::strong_count(&replier) > 1 {
                    wake = Some(now + idle);
                    continue;
                }
                let due = last_request.max(replier.last_reply()) + idle;
                if due > now {
                    wake = Some(due);
                    continue;
                }
                let reason = idle_reason(idle, lines.is_partial());
                tracing::info!(conn, "{reason}");
                replier.send(Reply::Error { reason });
                return;
            }
        };
        let req = match got {
            Ok(Line::Eof) => return,
            Err(e) => {
                tracing::debug!(conn, "reading from client: {e}");
                return;
            }
            Ok(Line::TooLong(len)) => Err(ProtocolError::TooLong {
                len,
                limit: limits.max_line_bytes(),
                max_text_chars: limits.max_text_chars,
            }),
            Ok(Line::Complete) => {
                if lines.is_blank() {
                    // Blank lines (e.g. a trailing newline) are not requests.
                    continue;
                }
                parse_line(lines.line())
            }
        };
        last_request = Instant::now();
        let envelope = Envelope {
            req,
            reply: replier.clone(),
        };
        if requests.send(envelope).await.is_err() {
            return;
        }
    }
}

/// Waits until `at` (forever when `None`; the select guard keeps that branch off).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why an idle connection is closed, naming the setting.
fn idle_reason(idle: Duration, partial: bool) -> String {
    let s = idle.as_secs();
    if partial {
        format!(
            "closing the connection: a request line was not completed within {s} s \
             (daemon.idle_timeout_s = {s}; end every request with a newline)"
        )
    } else {
        format!(
            "closing the connection: idle for {s} s with no job in flight \
             (daemon.idle_timeout_s = {s}; 0 = never)"
        )
    }
}

enum Line {
    Complete,
    Eof,
    /// Longer than the limit; the rest of it was read and dropped.
    TooLong(usize),
}

/// Splits a connection's input into lines, never holding more than `limit` bytes of one.
/// Its state lives here, not in a future, so [`LineReader::next_line`] may be cancelled
/// (by the idle timer) without losing what was read.
struct LineReader {
    reader: BufReader<OwnedReadHalf>,
    limit: usize,
    buf: Vec<u8>,
    /// Bytes of the current line read so far (also the dropped ones of a long line).
    total: usize,
    too_long: bool,
    /// The last call returned a line: the next one starts a new line.
    done: bool,
}

impl LineReader {
    fn new(read: OwnedReadHalf, limit: usize) -> Self {
        LineReader {
            reader: BufReader::new(read),
            limit,
            buf: Vec::with_capacity(1024),
            total: 0,
            too_long: false,
            done: false,
        }
    }

    /// The line last returned as [`Line::Complete`], without its newline.
    fn line(&self) -> &[u8] {
        &self.buf
    }

    fn is_blank(&self) -> bool {
        self.buf.iter().all(|b| b.is_ascii_whitespace())
    }

    /// Whether part of a line has arrived without its newline.
    fn is_partial(&self) -> bool {
        !self.done && self.total > 0
    }

    fn into_inner(self) -> BufReader<OwnedReadHalf> {
        self.reader
    }

    /// Reads up to the end of the next line. Cancel-safe: `fill_buf` is, and what it
    /// returned is moved into `self` before the next await.
    async fn next_line(&mut self) -> io::Result<Line> {
        if self.done {
            self.buf.clear();
            self.total = 0;
            self.too_long = false;
            self.done = false;
        }
        loop {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                // EOF: a last line without a newline still counts.
                self.done = true;
                return Ok(if self.too_long {
                    Line::TooLong(self.total)
                } else if self.total == 0 {
                    Line::Eof
                } else {
                    Line::Complete
                });
            }
            let (part, end) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            self.total += part.len();
            if !self.too_long {
                if self.buf.len() + part.len() > self.limit {
                    self.too_long = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(part);
                }
            }
            let used = end.unwrap_or(chunk.len());
            self.reader.consume(used);
            if end.is_some() {
                self.done = true;
                return Ok(if self.too_long {
                    Line::TooLong(self.total)
                } else {
                    Line::Complete
                });
            }
        }
    }
}
