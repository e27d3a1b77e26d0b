//! The `herald` command line: argument parsing and dispatch only.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use herald::audio::alsa::{list_devices, AlsaSink};
use herald::audio::playout::Playout;
use herald::audio::wav::WavSink;
use herald::audio::Sink;
use herald::config::{Config, Loaded};
use herald::pipeline::{self, Limits, SpeakReport, Voice};
use herald::tts::openai::OpenAiClient;
use herald::tts::AudioFormat;

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
}

#[derive(clap::Args, Debug)]
struct SpeakArgs {
    /// Voice (alloy, ash, ballad, coral, echo, fable, onyx, nova, sage, shimmer, verse, marin, cedar).
    #[arg(long)]
    voice: Option<String>,
    /// Model (tts-1, tts-1-hd, gpt-4o-mini-tts or a dated snapshot).
    #[arg(long)]
    model: Option<String>,
    /// How to speak (gpt-4o-mini-tts only), e.g. "cheerful".
    #[arg(long)]
    instructions: Option<String>,
    /// Stream format: opus (small, decoded here) or pcm (lowest latency, more bytes).
    #[arg(long)]
    format: Option<AudioFormat>,
    /// Speed 0.25–4.0.
    #[arg(long)]
    speed: Option<f32>,
    /// API base URL (overrides OPENAI_BASE_URL and the config).
    #[arg(long, value_name = "URL")]
    api_base: Option<String>,
    #[command(flatten)]
    out: Output,
    /// The text to speak; several words are joined with spaces.
    #[arg(required = true, num_args = 1..)]
    text: Vec<String>,
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
    init_logging(cli.verbose);
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
    match runtime.block_on(run(cli)) {
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

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "herald=warn",
        1 => "herald=info",
        _ => "herald=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> Result<()> {
    let Loaded {
        mut config,
        warnings,
        ..
    } = Config::load(cli.config.as_deref())?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    match cli.command {
        Command::Speak(args) => speak(&mut config, args).await,
        Command::Play { file, out } => play(&config, &file, &out).await,
        Command::Devices => devices(),
    }
}

async fn speak(config: &mut Config, args: SpeakArgs) -> Result<()> {
    if let Some(base) = args.api_base {
        config.api.api_base = base;
    }
    let text = if args.text.len() == 1 && args.text[0] == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the text from stdin")?
    } else {
        args.text.join(" ")
    };
    let s = &config.speech;
    let voice = Voice {
        model: args.model.unwrap_or_else(|| s.model.clone()),
        voice: args.voice.unwrap_or_else(|| s.voice.clone()),
        format: args.format.unwrap_or(s.format),
        speed: args.speed.or(Some(s.speed)).filter(|&v| v != 1.0),
        instructions: args
            .instructions
            .or_else(|| Some(s.instructions.clone()))
            .filter(|i| !i.is_empty()),
    };
    let limits = Limits {
        max_text_chars: s.max_text_chars,
        segment_chars: config.segment_chars(),
        lookahead: s.lookahead,
    };
    // Reject bad text before opening the device or touching the network.
    herald::text::validate(&text, limits.max_text_chars)?;
    let key = config.api_key()?;
    if key.is_none() {
        bail!("no API key: set OPENAI_API_KEY, or api.api_key_file in the config");
    }
    let client = OpenAiClient::new(config.openai(key))?;
    let mut playout = open_playout(config, &args.out)?;
    let result = pipeline::speak(Arc::new(client), &mut playout, &text, &voice, limits).await;
    finish(playout, result)
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
    let req = config.sink_request();
    let sink: Box<dyn Sink> = match &out.out {
        Some(path) => {
            let period = (req.rate as usize * req.period_ms as usize / 1000).max(1);
            Box::new(WavSink::create(path, req.rate, req.channels, period)?)
        }
        None => {
            let device = out
                .device
                .clone()
                .unwrap_or_else(|| config.audio.device.clone());
            Box::new(AlsaSink::open(&device, &req)?)
        }
    };
    Ok(Playout::spawn(sink, config.playout())?)
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
