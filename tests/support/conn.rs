//! A unix-socket client of `herald serve` for tests: JSON lines out, replies in, with a
//! read timeout as a hang guard.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// How long a reply may take before the test fails (a hang guard, not a measurement).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `r` ends a job.
pub fn is_terminal(r: &Value) -> bool {
    matches!(
        r["event"].as_str(),
        Some("finished" | "failed" | "cancelled" | "interrupted" | "expired")
    )
}

/// One connection to the daemon's socket.
pub struct Conn {
    /// The write side (tests that trickle bytes or shut it down use it directly).
    pub w: UnixStream,
    /// The read side.
    pub r: BufReader<UnixStream>,
}

impl Conn {
    pub fn open(sock: &Path) -> Conn {
        let w = UnixStream::connect(sock).unwrap();
        w.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Conn { w, r }
    }

    /// Sends raw bytes (a line, or something that is not one).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// Sends one JSON request line.
    pub fn send(&mut self, v: Value) {
        self.send_raw(format!("{v}\n").as_bytes());
    }

    /// Sends a `speak` request.
    pub fn speak(&mut self, id: &str, text: &str, priority: &str) {
        self.send(json!({"cmd": "speak", "text": text, "id": id, "priority": priority}));
    }

    /// Replies until `n` terminal replies for jobs arrived; returns all read.
    pub fn terminals(&mut self, n: usize) -> Vec<Value> {
        let mut seen = Vec::new();
        let mut count = 0;
        while count < n {
            let r = self.reply();
            if is_terminal(&r) {
                count += 1;
            }
            seen.push(r);
        }
        seen
    }

    pub fn reply(&mut self) -> Value {
        let mut line = String::new();
        let n = self.r.read_line(&mut line).expect("no reply in time");
        assert!(n > 0, "the daemon closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
    }

    /// Replies until one with `event` == `ev`; returns all read.
    pub fn until(&mut self, ev: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let r = self.reply();
            let done = r["event"] == ev;
            seen.push(r);
            if done {
                return seen;
            }
        }
    }

    /// Sends `req` and checks that the next reply refuses it with every one of `needles` in
    /// its reason (the next reply: a request that does not parse has no id to answer under).
    pub fn refused(&mut self, req: &Value, needles: &[&str]) {
        self.send(req.clone());
        let r = self.reply();
        assert_eq!(r["event"], "failed", "{req}: {r}");
        let reason = r["reason"].as_str().unwrap();
        for n in needles {
            assert!(reason.contains(n), "{req}: {reason}");
        }
    }

    /// The terminal reply of job `id` (every reply before it is skipped).
    pub fn terminal(&mut self, id: &str) -> Value {
        loop {
            let r = self.reply();
            if is_terminal(&r) && r["id"] == id {
                return r;
            }
        }
    }
}
