//! The control socket: binding (or taking systemd's), the accept loop and per-connection
//! reader/writer tasks. A client that sends garbage gets a `failed` reply and stays
//! connected; a client that does not read its replies is disconnected, never waited for.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, Notify};

use crate::control::replier::Replier;
use crate::protocol::{parse_line, Envelope, ProtocolError, Reply, ReplyTo, MAX_LINE_BYTES};

/// Replies buffered per connection before a non-reading client is dropped.
pub const REPLY_QUEUE: usize = 256;
/// How long a refused connection is given to read the refusal.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);
/// How long a refused connection's input is drained before closing, and at most how much.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
const REFUSAL_DRAIN_BYTES: usize = 256 * 1024;

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
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) {
    let live = Arc::new(AtomicUsize::new(0));
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
        if live.load(Ordering::SeqCst) >= max_connections {
            tracing::warn!(conn, max_connections, "too many connections; refusing one");
            conns.spawn(refuse(stream, max_connections));
            continue;
        }
        live.fetch_add(1, Ordering::SeqCst);
        let live = live.clone();
        let requests = requests.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            connection(stream, conn, requests, stop).await;
            live.fetch_sub(1, Ordering::SeqCst);
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

async fn refuse(mut stream: UnixStream, max: usize) {
    let line = Reply::Error {
        reason: format!(
            "too many connections ({max} open; daemon.max_connections = {max}): try again later"
        ),
    }
    .to_line();
    let _ = tokio::time::timeout(REFUSAL_WRITE, stream.write_all(line.as_bytes())).await;
    let _ = stream.shutdown().await;
    // Lingering close: a client that writes its request before reading (`echo … | socat`)
    // would otherwise get EPIPE instead of the reason. Bounded in time and bytes.
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        let mut buf = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

async fn connection(
    stream: UnixStream,
    conn: u64,
    requests: mpsc::Sender<Envelope>,
    stop: watch::Receiver<bool>,
) {
    tracing::debug!(conn, "client connected");
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Reply>(REPLY_QUEUE);
    let kill = Arc::new(Notify::new());
    let replier: Arc<dyn ReplyTo> = Arc::new(Replier::new(conn, tx, kill.clone()));

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

    let reader = read_requests(read, conn, &requests, replier, kill.clone(), stop);
    reader.await;
    // The reader is done (EOF, error or kill): the writer finishes sending what jobs of
    // this connection still report, until they all ended and dropped their repliers.
    let _ = writer.await;
    tracing::debug!(conn, "client disconnected");
}

async fn read_requests(
    read: tokio::net::unix::OwnedReadHalf,
    conn: u64,
    requests: &mpsc::Sender<Envelope>,
    replier: Arc<dyn ReplyTo>,
    kill: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let got = tokio::select! {
            r = read_line(&mut reader, &mut line) => r,
            _ = kill.notified() => {
                // Let the writer see it too.
                kill.notify_one();
                return;
            }
            _ = stop.wait_for(|s| *s) => return,
        };
        let req = match got {
            Ok(Line::Eof) => return,
            Err(e) => {
                tracing::debug!(conn, "reading from client: {e}");
                return;
            }
            Ok(Line::TooLong(len)) => Err(ProtocolError::TooLong { len }),
            Ok(Line::Complete) => {
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    // Blank lines (e.g. a trailing newline) are not requests.
                    continue;
                }
                parse_line(&line)
            }
        };
        let envelope = Envelope {
            req,
            reply: replier.clone(),
        };
        if requests.send(envelope).await.is_err() {
            return;
        }
    }
}

enum Line {
    Complete,
    Eof,
    /// Longer than the limit; the rest of it was read and dropped.
    TooLong(usize),
}

/// Reads one line into `buf` (without the newline), never holding more than the limit.
async fn read_line(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> io::Result<Line> {
    let mut total = 0usize;
    let mut too_long = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            // EOF: a last line without a newline still counts.
            return Ok(if too_long {
                Line::TooLong(total)
            } else if buf.is_empty() {
                Line::Eof
            } else {
                Line::Complete
            });
        }
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        total += part.len();
        if !too_long {
            if buf.len() + part.len() > MAX_LINE_BYTES {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let used = done.unwrap_or(chunk.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(if too_long {
                Line::TooLong(total)
            } else {
                Line::Complete
            });
        }
    }
}
