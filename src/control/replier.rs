//! Where one connection's replies go: a bounded queue drained by the connection's writer.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::protocol::{Reply, ReplyTo};

/// Sends replies to one connection without ever blocking the scheduler.
#[derive(Debug, Clone)]
pub struct Replier {
    conn: u64,
    tx: mpsc::Sender<Reply>,
    kill: Arc<Notify>,
    /// When the last reply was queued (the connection's idle time counts from it).
    last_reply: Arc<Mutex<Instant>>,
}

impl Replier {
    /// A replier for connection `conn`; `kill` is notified when the client stops reading.
    pub fn new(conn: u64, tx: mpsc::Sender<Reply>, kill: Arc<Notify>) -> Self {
        Replier {
            conn,
            tx,
            kill,
            last_reply: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// When the last reply was sent (or the replier made, before any).
    pub fn last_reply(&self) -> Instant {
        // A poisoned lock only means a panic elsewhere mid-store; the instant is still valid.
        *self.last_reply.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ReplyTo for Replier {
    /// Queues `reply` for the connection. A client whose reply queue is full is not
    /// reading: its connection is closed (never waited for). A terminal reply to a
    /// client that is gone is logged instead.
    fn send(&self, reply: Reply) {
        *self.last_reply.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        match self.tx.try_send(reply) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(r)) => {
                tracing::warn!(
                    conn = self.conn,
                    "client does not read its replies; closing its connection (lost: {})",
                    r.to_line().trim_end()
                );
                self.kill.notify_one();
            }
            Err(mpsc::error::TrySendError::Closed(r)) => {
                if r.is_terminal() {
                    tracing::info!(
                        conn = self.conn,
                        "client disconnected before: {}",
                        r.to_line().trim_end()
                    );
                }
            }
        }
    }
}
