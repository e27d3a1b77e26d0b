//! Where one connection's replies go: a bounded queue drained by the connection's writer.

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::protocol::{Reply, ReplyTo};

/// Sends replies to one connection without ever blocking the scheduler.
#[derive(Debug, Clone)]
pub struct Replier {
    conn: u64,
    tx: mpsc::Sender<Reply>,
    kill: Arc<Notify>,
}

impl Replier {
    /// A replier for connection `conn`; `kill` is notified when the client stops reading.
    pub fn new(conn: u64, tx: mpsc::Sender<Reply>, kill: Arc<Notify>) -> Self {
        Replier { conn, tx, kill }
    }
}

impl ReplyTo for Replier {
    /// Queues `reply` for the connection. A client whose reply queue is full is not
    /// reading: its connection is closed (never waited for). A terminal reply to a
    /// client that is gone is logged instead.
    fn send(&self, reply: Reply) {
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
