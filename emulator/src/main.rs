//! herald-emulator: a local OpenAI-compatible speech endpoint for tests and demos.
//! Prints its base URL on stdout, logs one line per request to stderr.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use herald_emulator::{Emulator, EmulatorConfig};

/// OpenAI-compatible POST /v1/audio/speech (opus, pcm) with scenario-selected timing and faults.
#[derive(Debug, Parser)]
#[command(name = "herald-emulator", version)]
struct Args {
    /// Address to listen on (loopback only unless --allow-remote).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// The bearer key clients must send.
    #[arg(
        long,
        env = "HERALD_EMULATOR_KEY",
        default_value = "sk-test",
        hide_env_values = true
    )]
    key: String,
    /// Seed for stall patterns (scenarios without seed=N).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Scenario applied to every request before its own path prefix (e.g. "wifi").
    #[arg(long, default_value = "")]
    scenario: String,
    /// Allow listening on a non-loopback address.
    #[arg(long)]
    allow_remote: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = EmulatorConfig {
        listen: args.listen,
        api_key: args.key,
        seed: args.seed,
        allow_remote: args.allow_remote,
        default_scenario: args.scenario,
        log_requests: true,
    };
    let handle = match Emulator::start(cfg).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("herald-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", handle.base_url(""));
    if let Err(e) = wait_for_signal().await {
        eprintln!("herald-emulator: cannot wait for signals: {e}");
        handle.shutdown().await;
        return ExitCode::FAILURE;
    }
    eprintln!("herald-emulator: shutting down");
    handle.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
