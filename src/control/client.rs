//! A small client for the control socket, used by `herald say/status/stop/skip`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::protocol::{Reply, Request};

/// Errors talking to the daemon; each names the socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket.
    #[error("cannot connect to herald at {path}: {source} (is `herald serve` running? see daemon.socket_path)")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection broke.
    #[error("talking to herald at {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon closed the connection before the expected reply.
    #[error("herald at {path} closed the connection before replying")]
    Closed {
        /// The socket path.
        path: PathBuf,
    },
    /// A reply line was not understood.
    #[error("herald at {path} sent a reply this client does not understand: {line}")]
    BadReply {
        /// The socket path.
        path: PathBuf,
        /// The line.
        line: String,
    },
}

/// One connection to the daemon.
pub struct Client {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = stream.try_clone().map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Client {
            path: path.to_path_buf(),
            writer: stream,
            reader: BufReader::new(reader),
        })
    }

    /// Gives up waiting for a reply after `timeout` (`None` = wait forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|source| self.io(source))
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends one request as a line (its JSON serialisation, the documented wire format).
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_string(request).map_err(|e| {
            self.io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("cannot encode the request: {e}"),
            ))
        })?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| self.io(source))
    }

    /// Reads the next reply.
    pub fn next_reply(&mut self) -> Result<Reply, ClientError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| self.io(source))?;
        if n == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        serde_json::from_str(line.trim()).map_err(|_| ClientError::BadReply {
            path: self.path.clone(),
            line: line.trim().to_string(),
        })
    }

    /// Sends `request` and returns the first reply (for status, stop, skip, cancel).
    pub fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.send(request)?;
        self.next_reply()
    }
}
