//! The `herald` command line: argument parsing and dispatch only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tracing::Level;
use tracing_subscriber::filter::Targets;

use herald::audio::alsa::list_devices;
use herald::audio::playout::Playout;
use herald::chimes::{ChimeChoice, ChimeSet};
use herald::config::{Config, Loaded};
use herald::control::client::Client;
use herald::daemon;
use herald::netmodel::store::{self, ModelStore};
use herald::pipeline::{self, Limits, SpeakReport};
use herald::protocol::{
    ExpiresIn, OkCommand, PresetRequest, Priority, Reply, Request, SpeakRequest, StatusReport,
    WhilePlaying,
};
use herald::tts::openai::OpenAiClient;
use herald::tts::FormatChoice;

/// herald: speaks text through OpenAI text-to-speech, streamed and decoded on the device.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Config file (default: /etc/herald/herald.toml if it exists).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Speak TEXT ("-" reads it from stdin) on the audio device or into a WAV file.
    Speak(SpeakArgs),
    /// Play a local Ogg Opus file through the same pipeline.
    Play {
        /// The .opus/.ogg file.
        file: PathBuf,
        #[command(flatten)]
        out: Output,
    },
    /// List ALSA playback devices and what they accept.
    Devices,
    /// Run the daemon: speak what programs send to the control socket.
    Serve,
    /// Check the config, the API key, the audio device and the socket path.
    Check,
    /// Ask the running daemon to speak TEXT (waits until it has been spoken).
    Say(SayArgs),
    /// Show what the running daemon is doing.
    Status {
        /// Print the daemon's JSON reply.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Stop what the daemon is saying and clear its queue.
    Stop {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Skip what the daemon is saying; the queue carries on.
    Skip {
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Play a configured preset through the daemon, exactly like its button (waits until
    /// it has played).
    Press {
        /// The preset's name ([presets.NAME] in the config).
        name: String,
        /// What to do if it is already playing (default: its button's rule, else ignore).
        #[arg(long, value_name = "RULE", value_enum)]
        while_playing: Option<WhilePlaying>,
        /// Return once the daemon accepted the press.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// List the daemon's presets and whether each is cached.
    Presets {
        /// Print the daemon's JSON reply.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Forget the network model the daemon learned (every endpoint and format); it
    /// learns afresh from the next announcement.
    ResetNetworkModel {
        /// Reset this user's model instead, the one `herald speak` learns
        /// ($XDG_STATE_HOME/herald, else ~/.local/state/herald).
        #[arg(long, conflicts_with = "socket")]
        local: bool,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(clap::Args, Debug)]
struct SocketArg {
    /// Control socket (default: daemon.socket_path from the config).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct SayArgs {
    #[command(flatten)]
    voice: VoiceArgs,
    /// Where the job goes in the queue.
    #[arg(long, value_enum, default_value_t = Priority::Normal)]
    priority: Priority,
    /// An id for the job (echoed in replies; usable with cancel).
    #[arg(long)]
    id: Option<String>,
    /// Drop the job unplayed if it has not started within SECONDS (exit status 1).
    #[arg(long, value_name = "SECONDS")]
    expires_in: Option<ExpiresIn>,
    /// Play on the configured output NAME (`[outputs.NAME]`, e.g. every room through
    /// Snapcast) instead of this box's device.
    #[arg(long, value_name = "NAME")]
    to: Option<String>,
    /// Return once the job is queued instead of when it has been spoken.
    #[arg(long)]
    no_wait: bool,
    /// Fail rather than speak with the local fallback voice when the API can't be reached.
    #[arg(long)]
    no_fallback: bool,
    #[command(flatten)]
    socket: SocketArg,
    /// The text to speak ("-" reads it from stdin); several words are joined with spaces.
    #[arg(required = true, num_args = 1..)]
    text: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct SpeakArgs {
    #[command(flatten)]
    voice: VoiceArgs,
    /// API base URL (overrides OPENAI_BASE_URL and the config).
    #[arg(long, value_name = "URL")]
    api_base: Option<String>,
    /// Fail rather than speak with the local fallback voice ([fallback]) when the API can't
    /// be reached.
    #[arg(long)]
    no_fallback: bool,
    #[command(flatten)]
    out: Output,
    /// The text to speak; several words are joined with spaces.
    #[arg(required = true, num_args = 1..)]
    text: Vec<String>,
}

/// Voice settings shared by `speak` and `say` (unset ones take the configured defaults).
#[derive(clap::Args, Debug)]
struct VoiceArgs {
    /// Voice (alloy, ash, ballad, coral, echo, fable, onyx, nova, sage, shimmer, verse, marin, cedar).
    #[arg(long)]
    voice: Option<String>,
    /// Model (tts-1, tts-1-hd, gpt-4o-mini-tts or a dated snapshot).
    #[arg(long)]
    model: Option<String>,
    /// How to speak (gpt-4o-mini-tts only), e.g. "cheerful".
    #[arg(long)]
    instructions: Option<String>,
    /// Stream format: opus (small, decoded on the device), pcm (lowest latency, more bytes)
    /// or auto (the first sentence as pcm, the rest as opus).
    #[arg(long)]
    format: Option<FormatChoice>,
    /// Speed 0.25–4.0.
    #[arg(long)]
    speed: Option<f32>,
    /// Volume 0–100 (cubic: 50 ≈ −18 dB); clamped by audio.min_volume, max_volume and
    /// quiet hours. Default audio.volume.
    #[arg(long, value_name = "N")]
    volume: Option<herald::volume::Volume>,
    /// Chime before the speech: a [chimes.NAME] of the config (default daemon.chime).
    #[arg(long, value_name = "NAME", conflicts_with = "no_chime")]
    chime: Option<String>,
    /// Chime after the speech (default daemon.chime_after).
    #[arg(long, value_name = "NAME", conflicts_with = "no_chime")]
    chime_after: Option<String>,
    /// No chime before or after, whatever the config says.
    #[arg(long)]
    no_chime: bool,
}

impl VoiceArgs {
    /// The chimes asked for before and after (`None`: the config's defaults).
    fn chimes(&self) -> (Option<ChimeChoice>, Option<ChimeChoice>) {
        if self.no_chime {
            return (
                Some(ChimeChoice::Default(false)),
                Some(ChimeChoice::Default(false)),
            );
        }
        (
            self.chime.clone().map(ChimeChoice::Named),
            self.chime_after.clone().map(ChimeChoice::Named),
        )
    }
}

/// The text from the command line, or from stdin when it is the single word "-".
fn text_arg(words: &[String]) -> Result<String> {
    if words.len() == 1 && words[0] == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the text from stdin")
    } else {
        Ok(words.join(" "))
    }
}

#[derive(clap::Args, Debug)]
struct Output {
    /// ALSA device (overrides the config's audio.device).
    #[arg(long, short = 'd')]
    device: Option<String>,
    /// Write a WAV file instead of playing.
    #[arg(long, value_name = "FILE", conflicts_with = "device")]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, matches!(cli.command, Command::Serve));
    herald::audio::alsa::route_alsa_lib_errors();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Never wait on a blocking task stuck in a device call: the work is done.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping causes the message already quotes
/// (our error enums include their source's text in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

/// What to log: `HERALD_LOG` (`target=level` lists such as `herald=debug`, or a bare
/// level), else by `-v` and whether this is the daemon. A `HERALD_LOG` that does not parse
/// is reported and the default used.
fn log_filter(verbose: u8, daemon: bool) -> Targets {
    let level = match (verbose, daemon) {
        (0, false) => Level::WARN,
        (0, true) | (1, _) => Level::INFO,
        _ => Level::DEBUG,
    };
    let default = Targets::new().with_target("herald", level);
    match std::env::var("HERALD_LOG") {
        Ok(v) => v.parse().unwrap_or_else(|e| {
            eprintln!("herald: HERALD_LOG={v:?} is not a filter ({e}); using the default (allowed: e.g. herald=debug)");
            default
        }),
        Err(_) => default,
    }
}

fn init_logging(verbose: u8, daemon: bool) {
    use tracing_subscriber::prelude::*;
    let filter = log_filter(verbose, daemon);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // Under systemd (stderr connected to the journal) log natively, so each job's figures
    // are structured, queryable fields (`journalctl -u herald ID=j7`); if the journal
    // socket is unusable, plain lines without timestamps (the journal adds its own).
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journal) => registry
                .with(journal.with_syslog_identifier("herald".into()))
                .init(),
            Err(_) => registry.with(fmt.without_time()).init(),
        }
    } else {
        registry.with(fmt).init();
    }
}

async fn run(cli: Cli) -> Result<()> {
    let Loaded {
        mut config,
        warnings,
        path,
    } = Config::load(cli.config.as_deref())?;
    // `check` prints them itself, among its findings.
    if !matches!(cli.command, Command::Check) {
        for w in &warnings {
            tracing::warn!("{w}");
        }
    }
    match cli.command {
        Command::Speak(args) => speak(&mut config, args).await,
        Command::Play { file, out } => play(&config, &file, &out).await,
        Command::Devices => devices(),
        Command::Serve => Ok(daemon::serve(config, cli.config.or(path)).await?),
        Command::Check => {
            if herald::check::check(&config, path.as_deref(), &warnings) {
                Ok(())
            } else {
                bail!("check found problems (see above)")
            }
        }
        Command::Say(args) => say(&config, args),
        Command::Status { json, socket } => status(&config, &socket, json),
        Command::Stop { socket } => simple(&config, &socket, Request::Stop),
        Command::Skip { socket } => simple(&config, &socket, Request::Skip),
        Command::Press {
            name,
            while_playing,
            no_wait,
            socket,
        } => press(&config, &socket, &name, while_playing, no_wait),
        Command::Presets { json, socket } => presets(&config, &socket, json),
        Command::ResetNetworkModel { local: true, .. } => reset_local_model(),
        Command::ResetNetworkModel { socket, .. } => reset_model(&config, &socket),
    }
}

async fn speak(config: &mut Config, args: SpeakArgs) -> Result<()> {
    if let Some(base) = args.api_base {
        config.api.api_base = base;
    }
    let text = text_arg(&args.text)?;
    let s = &config.speech;
    let v = args.voice;
    let chimes = cli_chimes(config, &v)?;
    let voice = config
        .default_voice()
        .with(v.model, v.voice, v.format, v.speed, v.instructions);
    let limits = Limits {
        max_text_chars: s.max_text_chars,
        lookahead: s.lookahead,
    };
    // Reject bad text before opening the device or touching the network.
    herald::text::validate(&text, limits.max_text_chars)?;
    let fallback =
        herald::fallback::from_settings(&config.fallback()).filter(|_| !args.no_fallback);
    let key = config.api_key()?;
    // Without a key only the fallback can speak; without either, say so before anything.
    if key.is_none() && fallback.is_none() {
        return Err(herald::tts::TtsError::NoKey.into());
    }
    let client = OpenAiClient::new(config.openai(key))?;
    let mut playout = open_playout(config, &args.out)?;
    // The daemon's rule: asked (or audio.volume), clamped, capped by quiet hours.
    let volume = config
        .volume_policy()
        .applied(v.volume, herald::volume::local_time_of_day());
    playout.set_gain(volume.gain());
    // Start by what earlier runs learned about this endpoint (its problems are reported
    // when this run's learning is saved).
    let model_key = store::key(&config.api.api_base, voice.format);
    let (models, _) = ModelStore::open(store::cli_dir().as_deref());
    playout.plan_next(models.model(&model_key).plan(config.audio.start_quantile));
    let result = pipeline::announce(
        Arc::new(client),
        fallback.as_deref(),
        &mut playout,
        &text,
        &voice,
        limits,
        &chimes,
    )
    .await;
    // Only the network's own audio teaches the network model.
    if let Some(report) = result.as_ref().ok().filter(|r| r.fallback.is_none()) {
        // What the network did is remembered for the next run (never a reason to fail).
        let key = store::key(&config.api.api_base, voice.format);
        let audio_ms = report.audio.as_secs_f64() * 1000.0;
        for problem in
            ModelStore::record(store::cli_dir().as_deref(), &key, &report.bursts, audio_ms)
        {
            tracing::warn!("{problem}");
        }
    }
    finish(playout, result)
}

/// The chimes `herald speak` plays: asked for on the command line, else the config's
/// `daemon.chime`/`chime_after`. An unknown name is an error; an unusable file a warning.
fn cli_chimes(config: &Config, v: &VoiceArgs) -> Result<pipeline::ChimePlan> {
    let (before, after) = v.chimes();
    let d = &config.daemon;
    let set = ChimeSet::load(&config.chimes, config.audio.rate);
    let get = |field: &str,
               choice: Option<ChimeChoice>,
               default: Option<&str>|
     -> Result<Option<Arc<herald::chimes::Chime>>> {
        let name = herald::chimes::pick(choice.as_ref(), default, config.chimes.keys())
            .map_err(|e| anyhow::anyhow!("--{field}: {e}"))?;
        let Some(name) = name else { return Ok(None) };
        Ok(set
            .playable(name)
            .map_err(|e| tracing::warn!("{e}; playing without it"))
            .ok())
    };
    Ok(pipeline::ChimePlan {
        before: get("chime", before, d.chime.as_deref())?,
        after: get("chime-after", after, d.chime_after.as_deref())?,
        gap: std::time::Duration::from_millis(u64::from(d.chime_gap_ms)),
        not_before: None,
    })
}

async fn play(config: &Config, file: &Path, out: &Output) -> Result<()> {
    let mut playout = open_playout(config, out)?;
    let result = pipeline::play_file(&mut playout, file).await;
    finish(playout, result)
}

fn finish(playout: Playout, result: Result<SpeakReport, pipeline::PipelineError>) -> Result<()> {
    let shutdown = playout.shutdown();
    let report = result?;
    shutdown?;
    eprintln!("{report}");
    Ok(())
}

fn open_playout(config: &Config, out: &Output) -> Result<Playout> {
    let output = match (&out.out, &out.device) {
        (Some(path), _) => pipeline::Output::Wav(path.clone()),
        (None, Some(device)) => pipeline::Output::Device(device.clone()),
        (None, None) => pipeline::Output::Device(config.audio.device.clone()),
    };
    Ok(pipeline::open_playout(
        &output,
        &config.sink_request(),
        config.playout(),
    )?)
}

fn devices() -> Result<()> {
    let list = list_devices();
    if list.is_empty() {
        println!("no ALSA playback devices found");
    }
    for d in list {
        println!("{}", d.name);
        if !d.description.is_empty() {
            for line in d.description.lines() {
                println!("    {line}");
            }
        }
        match d.caps {
            Ok(c) => {
                let rates: Vec<String> = c.common_rates.iter().map(|r| r.to_string()).collect();
                println!(
                    "    accepts: rates {}–{} Hz (common: {}), channels {}–{}, formats {}",
                    c.rates.0,
                    c.rates.1,
                    if rates.is_empty() {
                        "-".into()
                    } else {
                        rates.join(", ")
                    },
                    c.channels.0,
                    c.channels.1,
                    c.formats.join(", ")
                );
            }
            Err(e) => println!("    cannot probe: {e}"),
        }
    }
    Ok(())
}

fn socket_path(config: &Config, arg: &SocketArg) -> PathBuf {
    arg.socket
        .clone()
        .unwrap_or_else(|| config.daemon.socket_path.clone())
}

fn say(config: &Config, args: SayArgs) -> Result<()> {
    let text = text_arg(&args.text)?;
    let v = args.voice;
    let (chime, chime_after) = v.chimes();
    let req = Request::Speak(SpeakRequest {
        text,
        voice: v.voice,
        model: v.model,
        format: v.format,
        speed: v.speed,
        instructions: v.instructions,
        priority: args.priority,
        id: args.id,
        cache: false,
        volume: v.volume,
        expires_in_s: args.expires_in,
        chime,
        chime_after,
        fallback: args.no_fallback.then_some(false),
        to: args.to,
    });
    let mut client = Client::connect(&socket_path(config, &args.socket))?;
    client.send(&req)?;
    follow(&mut client, args.no_wait)
}

/// Prints a job's replies until its terminal one (or `queued` with `no_wait`).
fn follow(client: &mut Client, no_wait: bool) -> Result<()> {
    loop {
        match client.next_reply()? {
            Reply::Queued { id, position } => {
                if no_wait {
                    println!("queued {id} at position {position}");
                    return Ok(());
                }
            }
            Reply::Started {
                start_to_audio_ms, ..
            } => eprintln!("started after {start_to_audio_ms} ms"),
            Reply::Finished {
                id,
                request_to_audio_ms,
                duration_ms,
                stalls,
                stall_ms,
                bytes,
                segments,
                volume,
                engine,
                api_error,
                routed,
                ..
            } => {
                if let (Some(engine), Some(api_error)) = (engine, api_error) {
                    println!("spoken by the fallback voice ({engine}) because the API failed: {api_error}");
                }
                let ttfa = request_to_audio_ms.map_or("-".to_string(), |t| format!("{t} ms"));
                if let Some(why) = routed.as_ref().and_then(|r| r.output_fallback.as_ref()) {
                    eprintln!("{why}");
                }
                let on = routed
                    .map(|r| format!(" on output {},", r.output))
                    .unwrap_or_default();
                println!(
                    "{id} finished:{on} time to first audio {ttfa}, audio {:.2} s, stalls {stalls} ({stall_ms} ms), received {bytes} bytes in {segments} segment{}, volume {volume}",
                    duration_ms as f64 / 1000.0,
                    if segments == 1 { "" } else { "s" }
                );
                return Ok(());
            }
            Reply::Failed { reason, .. } => bail!("{reason}"),
            Reply::Cancelled { id, by } => bail!("{id} was cancelled ({by})"),
            Reply::Interrupted { id, by } => bail!("{id} was interrupted by {by}"),
            Reply::Expired { id, reason, .. } => bail!("{id} expired: {reason}"),
            Reply::Error { reason } => bail!("{reason}"),
            Reply::Ok {
                cmd: OkCommand::Preset,
                jobs,
                ..
            } => {
                println!(
                    "press ignored: the preset is already playing or queued ({})",
                    jobs.join(", ")
                );
                return Ok(());
            }
            Reply::Status(_) | Reply::Ok { .. } | Reply::Presets { .. } => {}
        }
    }
}

fn status(config: &Config, socket: &SocketArg, json: bool) -> Result<()> {
    let mut client = Client::connect(&socket_path(config, socket))?;
    client.set_timeout(Some(std::time::Duration::from_secs(10)))?;
    let reply = client.request(&Request::Status)?;
    let Reply::Status(s) = reply else {
        bail!("unexpected reply to status: {}", reply.to_line().trim_end());
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_status(&s);
    }
    Ok(())
}

fn print_status(s: &StatusReport) {
    println!("herald {} — {}, up {} s", s.version, s.state, s.uptime_s);
    let d = &s.device;
    match (d.rate, d.channels) {
        (Some(rate), Some(ch)) => println!(
            "device:  {} ({}: {rate} Hz, {ch} ch, {} frames per period)",
            d.name,
            d.state,
            d.period_frames.unwrap_or(0)
        ),
        _ => println!("device:  {} ({})", d.name, d.state),
    }
    if let Some(e) = &d.error {
        println!("         error: {e}");
    }
    if let Some(ms) = d.retry_in_ms {
        println!("         reopening in {:.1} s", ms as f64 / 1000.0);
    }
    println!("         real-time priority: {}", d.realtime);
    match &s.now_playing {
        Some(p) => println!(
            "playing: {} \"{}\" ({:.1} s)",
            p.id,
            p.text,
            p.elapsed_ms as f64 / 1000.0
        ),
        None => println!("playing: nothing"),
    }
    println!("queue:   {} waiting", s.queue_length);
    for j in &s.queue {
        println!("         {} [{:?}] \"{}\"", j.id, j.priority, j.text);
    }
    let c = &s.counters;
    let p = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v}"));
    println!(
        "jobs:    {} requests, {} accepted, {} finished, {} failed, {} cancelled, {} expired, {} stalls",
        c.requests, c.accepted, c.finished, c.failed, c.cancelled, c.expired, c.stalls
    );
    println!("volume:  at most {} now", s.max_volume);
    println!(
        "         time to first audio p50 {} / p90 {} / p99 {} ms",
        p(c.ttfa_ms_p50),
        p(c.ttfa_ms_p90),
        p(c.ttfa_ms_p99)
    );
    let n = &s.network;
    println!(
        "api:     {} ({}; last success {})",
        n.api_base,
        if n.warm { "warm" } else { "cold" },
        n.last_ok_s_ago
            .map_or("never".to_string(), |s| format!("{s} s ago"))
    );
    if let Some(e) = &n.last_error {
        println!("         last error: {e}");
    }
    if s.network_model.is_empty() {
        println!("learned: nothing yet (cold start: playout uses the fixed rules)");
    }
    for (i, m) in s.network_model.iter().enumerate() {
        let head = if i == 0 { "learned:" } else { "" };
        println!("{head:9}{m}");
    }
    for (i, p) in s.presets.iter().enumerate() {
        let head = if i == 0 { "presets:" } else { "" };
        let reason = p
            .reason
            .as_deref()
            .map_or(String::new(), |r| format!(": {r}"));
        println!("{head:9}{} {}{reason}", p.name, p.state);
    }
}

fn press(
    config: &Config,
    socket: &SocketArg,
    name: &str,
    while_playing: Option<WhilePlaying>,
    no_wait: bool,
) -> Result<()> {
    let req = Request::Preset(PresetRequest {
        name: name.to_string(),
        id: None,
        while_playing,
        volume: None,
        expires_in_s: None,
        chime: None,
        to: None,
    });
    let mut client = Client::connect(&socket_path(config, socket))?;
    client.send(&req)?;
    follow(&mut client, no_wait)
}

fn presets(config: &Config, socket: &SocketArg, json: bool) -> Result<()> {
    let mut client = Client::connect(&socket_path(config, socket))?;
    client.set_timeout(Some(std::time::Duration::from_secs(10)))?;
    let reply = client.request(&Request::Presets)?;
    let Reply::Presets { presets } = reply else {
        bail!(
            "unexpected reply to presets: {}",
            reply.to_line().trim_end()
        );
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&presets)?);
        return Ok(());
    }
    if presets.is_empty() {
        println!("no presets configured (add [presets.NAME] to the config)");
    }
    let width = presets.iter().map(|p| p.name.len()).max().unwrap_or(0);
    for p in &presets {
        let mut state = p.state.to_string();
        if let Some(r) = &p.reason {
            state.push_str(&format!(": {r}"));
        }
        if let Some(s) = p.retry_in_s {
            state.push_str(&format!(" (retry in {s} s)"));
        }
        println!("{:width$}  \"{}\"  {state}", p.name, p.text);
    }
    Ok(())
}

/// `stop` or `skip`: one request, one `ok`.
fn simple(config: &Config, socket: &SocketArg, req: Request) -> Result<()> {
    let mut client = Client::connect(&socket_path(config, socket))?;
    client.set_timeout(Some(std::time::Duration::from_secs(10)))?;
    match client.request(&req)? {
        Reply::Ok { cmd, jobs, .. } if jobs.is_empty() => println!("{cmd}: nothing was playing"),
        Reply::Ok { cmd, jobs, .. } => println!("{cmd}: {}", jobs.join(", ")),
        Reply::Failed { reason, .. } | Reply::Error { reason } => bail!("{reason}"),
        other => bail!("unexpected reply: {}", other.to_line().trim_end()),
    }
    Ok(())
}

/// "forgot N endpoints and formats", or that nothing had been learned.
fn forgot(n: usize) -> String {
    match n {
        0 => "nothing had been learned".to_string(),
        1 => "forgot 1 endpoint and format".to_string(),
        n => format!("forgot {n} endpoints and formats"),
    }
}

/// `reset-network-model`: the daemon forgets its network model.
fn reset_model(config: &Config, socket: &SocketArg) -> Result<()> {
    let mut client = Client::connect(&socket_path(config, socket))?;
    client.set_timeout(Some(std::time::Duration::from_secs(10)))?;
    match client.request(&Request::ResetNetworkModel)? {
        Reply::Ok {
            cmd: OkCommand::ResetNetworkModel,
            forgotten,
            ..
        } => println!(
            "the daemon's network model is reset: {}",
            forgot(forgotten.unwrap_or(0))
        ),
        Reply::Failed { reason, .. } | Reply::Error { reason } => bail!("{reason}"),
        other => bail!(
            "unexpected reply to reset_network_model: {}",
            other.to_line().trim_end()
        ),
    }
    Ok(())
}

/// `reset-network-model --local`: forgets the model `herald speak` keeps for this user.
fn reset_local_model() -> Result<()> {
    let Some(dir) = store::cli_dir() else {
        println!("nothing to reset: no state directory (XDG_STATE_HOME or HOME), so `herald speak` keeps no network model");
        return Ok(());
    };
    // A corrupt or unreadable file is warned about and replaced by the empty model.
    let (mut model, warning) = ModelStore::open(Some(&dir));
    let Some(path) = model.path().map(Path::to_path_buf) else {
        let why = warning.unwrap_or_else(|| format!("{} is unusable", dir.display()));
        bail!("cannot reset the network model: {why}");
    };
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    let forgotten = model.models().len();
    model.reset();
    model.save()?;
    println!(
        "the network model in {} is reset: {}",
        path.display(),
        forgot(forgotten)
    );
    Ok(())
}
