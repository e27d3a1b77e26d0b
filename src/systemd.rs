//! systemd glue: readiness/status/watchdog notification and socket activation. Everything
//! is a no-op when not started by systemd (no `NOTIFY_SOCKET`, no `LISTEN_FDS`).

use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use sd_notify::NotifyState;

/// Errors from the systemd glue.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// `LISTEN_FDS` was set but unusable.
    #[error("socket activation: {0}")]
    ListenFds(String),
}

/// Takes the listening unix socket systemd passed (`LISTEN_FDS`), if any. More than one
/// socket is an error: herald.socket declares exactly one.
pub fn activated_listener() -> Result<Option<UnixListener>, SystemdError> {
    if std::env::var_os("LISTEN_FDS").is_none() {
        return Ok(None);
    }
    let fds: Vec<_> = sd_notify::listen_fds()
        .map_err(|e| SystemdError::ListenFds(e.to_string()))?
        .collect();
    match fds.as_slice() {
        [] => Ok(None),
        [fd] => {
            // SAFETY: systemd hands us ownership of this descriptor (sd_listen_fds(3)); it is
            // used nowhere else in the process.
            let listener = unsafe { UnixListener::from_raw_fd(*fd) };
            // Fails if the descriptor is not a unix socket.
            listener.local_addr().map_err(|e| {
                SystemdError::ListenFds(format!("fd {fd} is not a unix socket: {e}"))
            })?;
            Ok(Some(listener))
        }
        more => Err(SystemdError::ListenFds(format!(
            "expected one socket, got {} (check herald.socket)",
            more.len()
        ))),
    }
}

/// Talks to the service manager; cheap to clone, silent outside systemd.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `WATCHDOG_USEC` (the socket itself is read on each send).
    pub fn from_env() -> Self {
        Notifier {
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// How often `watchdog()` must be called (half the configured `WatchdogSec=`).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// READY=1 (with a status line).
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// STATUS=… (shown by `systemctl status`).
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// WATCHDOG=1: only call this when the audio thread and the scheduler are alive.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// RELOADING=1 (with MONOTONIC_USEC, as systemd ≥ 253 wants for Type=notify-reload).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// STOPPING=1.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    fn send(&self, state: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(state) {
            tracing::debug!("sd_notify failed: {e}");
        }
    }
}
