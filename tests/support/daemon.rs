//! Running the real `herald serve` in tests and benchmarks: the command with the test
//! environment (ALSA test PCMs, the emulator's key, nothing inherited from a systemd
//! session), and waiting until its control socket answers.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::alsa_env;

/// `herald --config CONFIG serve` with the test ALSA config and `key`; stdin and stdout
/// closed, stderr left to the caller.
pub fn serve_command(config: &Path, key: &str) -> Command {
    let (var, value) = alsa_env().env_var();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("--config")
        .arg(config)
        .arg("serve")
        .env(var, value)
        .env("OPENAI_API_KEY", key)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("CACHE_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("LISTEN_FDS")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Waits until something accepts connections on `socket`; false after `timeout`.
pub fn wait_for_socket(socket: &Path, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while UnixStream::connect(socket).is_err() {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
