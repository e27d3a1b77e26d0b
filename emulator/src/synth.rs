//! Speech for the emulator: espeak-ng when installed (else a tone), resampled to 24 kHz,
//! trimmed, and cached per (text, voice, speed).

use std::collections::VecDeque;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::EmulatorError;

/// Output rate of everything the emulator synthesizes (OpenAI's rate).
pub const RATE: u32 = 24_000;
/// Tone length per input character when espeak-ng is missing or `tone` is asked for.
pub const TONE_MS_PER_CHAR: u32 = 60;

/// Which synthesizer produced (or should produce) the PCM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Synth {
    /// espeak-ng if it can be run, else the tone.
    Speech,
    /// Always the tone (predictable length: 60 ms per character at speed 1).
    Tone,
}

/// 24 kHz mono PCM of `text` spoken by espeak-ng (voice → espeak variant and pitch,
/// `speed` 0.25–4.0 → words per minute), or a tone of ~60 ms per character when
/// espeak-ng is not installed. Deterministic and cached.
pub fn synthesize(text: &str, voice: &str, speed: f32) -> Result<Vec<i16>, EmulatorError> {
    Ok(synthesize_shared(text, voice, speed, Synth::Speech)?.to_vec())
}

/// 24 kHz mono PCM tone whose length follows the text (60 ms per character at speed 1).
/// What `synthesize` falls back to, and what the `tone` scenario option always uses.
pub fn synthesize_tone(text: &str, voice: &str, speed: f32) -> Result<Vec<i16>, EmulatorError> {
    check_speed(speed)?;
    Ok(tone(text, voice, speed))
}

fn check_speed(speed: f32) -> Result<(), EmulatorError> {
    if !(0.25..=4.0).contains(&speed) {
        return Err(EmulatorError::Invalid(format!(
            "speed {speed} is outside 0.25–4.0"
        )));
    }
    Ok(())
}

type CacheKey = (String, String, u32, Synth);

/// Small LRU bounded by total samples, so a long-running emulator stays small.
struct Cache {
    entries: VecDeque<(CacheKey, Arc<Vec<i16>>)>,
    samples: usize,
}

const CACHE_MAX_ENTRIES: usize = 64;
const CACHE_MAX_SAMPLES: usize = RATE as usize * 600;

static CACHE: Mutex<Cache> = Mutex::new(Cache {
    entries: VecDeque::new(),
    samples: 0,
});

pub(crate) fn synthesize_shared(
    text: &str,
    voice: &str,
    speed: f32,
    synth: Synth,
) -> Result<Arc<Vec<i16>>, EmulatorError> {
    check_speed(speed)?;
    let key: CacheKey = (text.to_string(), voice.to_string(), speed.to_bits(), synth);
    if let Ok(mut cache) = CACHE.lock() {
        if let Some(pos) = cache.entries.iter().position(|(k, _)| *k == key) {
            if let Some(entry) = cache.entries.remove(pos) {
                let pcm = entry.1.clone();
                cache.entries.push_back(entry);
                return Ok(pcm);
            }
        }
    }
    let pcm = Arc::new(match synth {
        Synth::Tone => tone(text, voice, speed),
        Synth::Speech => match espeak(text, voice, speed)? {
            Some(pcm) => pcm,
            None => tone(text, voice, speed),
        },
    });
    if let Ok(mut cache) = CACHE.lock() {
        if !cache.entries.iter().any(|(k, _)| *k == key) {
            cache.samples += pcm.len();
            cache.entries.push_back((key, pcm.clone()));
            while cache.entries.len() > CACHE_MAX_ENTRIES
                || (cache.samples > CACHE_MAX_SAMPLES && cache.entries.len() > 1)
            {
                if let Some((_, old)) = cache.entries.pop_front() {
                    cache.samples -= old.len();
                }
            }
        }
    }
    Ok(pcm)
}

/// espeak variant and pitch per OpenAI voice, so voices sound different.
fn espeak_voice(voice: &str) -> (&'static str, u32) {
    match voice {
        "alloy" => ("en+f2", 50),
        "ash" => ("en+m1", 45),
        "ballad" => ("en+m4", 55),
        "coral" => ("en+f3", 60),
        "echo" => ("en+m2", 40),
        "fable" => ("en+m5", 50),
        "onyx" => ("en+m3", 25),
        "nova" => ("en+f1", 65),
        "sage" => ("en+f4", 45),
        "shimmer" => ("en+f5", 70),
        "verse" => ("en+m6", 50),
        "marin" => ("en+f2", 40),
        "cedar" => ("en+m7", 35),
        _ => ("en", 50),
    }
}

/// Runs espeak-ng; `Ok(None)` when it is not installed.
fn espeak(text: &str, voice: &str, speed: f32) -> Result<Option<Vec<i16>>, EmulatorError> {
    let (variant, pitch) = espeak_voice(voice);
    // espeak-ng's default is 175 words per minute; it accepts 80..=450.
    let wpm = (175.0 * speed).round().clamp(80.0, 450.0) as u32;
    // Text goes through stdin so input starting with '-' is never taken as an option.
    let child = Command::new("espeak-ng")
        .args(["--stdout", "--stdin", "-v", variant])
        .args(["-s", &wpm.to_string(), "-p", &pitch.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(EmulatorError::Espeak(format!(
                "cannot start espeak-ng: {e}"
            )))
        }
    };
    let writer = child.stdin.take().map(|mut stdin| {
        let text = text.to_string();
        // Written from a thread: espeak-ng may fill stdout before it has read all input.
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        })
    });
    let out = child
        .wait_with_output()
        .map_err(|e| EmulatorError::Espeak(format!("espeak-ng did not finish: {e}")))?;
    if let Some(w) = writer {
        let _ = w.join();
    }
    if !out.status.success() {
        return Err(EmulatorError::Espeak(format!(
            "espeak-ng exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let (rate, samples) = parse_wav(&out.stdout)?;
    let pcm = if rate == RATE {
        samples
    } else {
        resample(&samples, rate, RATE)?
    };
    Ok(Some(trim(pcm)))
}

/// Parses a mono s16 WAV; tolerates espeak-ng's streaming header (sizes of 0x7fff_f000).
pub(crate) fn parse_wav(bytes: &[u8]) -> Result<(u32, Vec<i16>), EmulatorError> {
    let bad = |m: &str| EmulatorError::Wav(m.to_string());
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE file"));
    }
    let mut pos = 12;
    let mut rate = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body_start = pos + 8;
        let body_end = body_start.saturating_add(size).min(bytes.len());
        let body = &bytes[body_start..body_end];
        match id {
            b"fmt " => {
                if body.len() < 16 {
                    return Err(bad("fmt chunk shorter than 16 bytes"));
                }
                let format = u16::from_le_bytes([body[0], body[1]]);
                let channels = u16::from_le_bytes([body[2], body[3]]);
                let r = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                let bits = u16::from_le_bytes([body[14], body[15]]);
                if format != 1 || channels != 1 || bits != 16 || r == 0 {
                    return Err(EmulatorError::Wav(format!(
                        "expected PCM mono 16-bit, got format {format}, {channels} channels, {bits} bits, {r} Hz"
                    )));
                }
                rate = Some(r);
            }
            b"data" => {
                let r = rate.ok_or_else(|| bad("data chunk before fmt chunk"))?;
                let samples = body
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                return Ok((r, samples));
            }
            _ => {}
        }
        pos = body_start.saturating_add(size + (size & 1));
    }
    Err(bad("no data chunk"))
}

/// espeak-ng's 22.05 kHz to the API's 24 kHz, with the pipeline's own resampler
/// (deterministic: the same input always gives the same samples).
pub(crate) fn resample(input: &[i16], from: u32, to: u32) -> Result<Vec<i16>, EmulatorError> {
    let failed = |e: herald::codec::resample::ResampleError| EmulatorError::Espeak(e.to_string());
    let mut r = herald::codec::resample::Resampler::new(from, to, 1).map_err(failed)?;
    let mut out = Vec::with_capacity(input.len() * to as usize / from as usize + 1);
    r.process(input, &mut out).map_err(failed)?;
    r.flush(&mut out).map_err(failed)?;
    Ok(out)
}

/// Cuts leading/trailing silence, keeping a short natural margin (10 ms before, 60 ms after).
fn trim(pcm: Vec<i16>) -> Vec<i16> {
    const THRESHOLD: i16 = 64;
    let first = pcm.iter().position(|s| s.unsigned_abs() > THRESHOLD as u16);
    let last = pcm
        .iter()
        .rposition(|s| s.unsigned_abs() > THRESHOLD as u16);
    match (first, last) {
        (Some(f), Some(l)) => {
            let start = f.saturating_sub(RATE as usize / 100);
            let end = (l + 1 + RATE as usize * 6 / 100).min(pcm.len());
            pcm[start..end].to_vec()
        }
        // Nothing audible (e.g. input "."): 100 ms of silence rather than an empty stream.
        _ => vec![0; RATE as usize / 10],
    }
}

/// A voice-pitched tone, pulsing like syllables, 60 ms per character at speed 1.
fn tone(text: &str, voice: &str, speed: f32) -> Vec<i16> {
    let chars = text.chars().count().max(1) as f64;
    let seconds = chars * TONE_MS_PER_CHAR as f64 / 1000.0 / speed as f64;
    let len = (seconds * RATE as f64).round().max(1.0) as usize;
    let idx = herald::tts::VOICES
        .iter()
        .position(|v| *v == voice)
        .unwrap_or(0);
    let freq = 140.0 + 10.0 * idx as f64;
    let fade = (RATE as usize / 100).min(len / 2).max(1);
    (0..len)
        .map(|i| {
            let t = i as f64 / RATE as f64;
            let syllable = 0.75 + 0.25 * (2.0 * std::f64::consts::PI * 4.0 * t).cos();
            let edge = (i.min(len - 1 - i) as f64 / fade as f64).min(1.0);
            let s = (2.0 * std::f64::consts::PI * freq * t).sin() * 0.3 * syllable * edge;
            (s * 32767.0).round() as i16
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tone_length_follows_text_and_speed() {
        let a = synthesize_tone("hello", "alloy", 1.0).unwrap();
        assert_eq!(a.len(), 5 * 60 * 24);
        let b = synthesize_tone("hello", "alloy", 2.0).unwrap();
        assert_eq!(b.len(), 5 * 60 * 24 / 2);
        assert!(a.iter().any(|s| s.unsigned_abs() > 5000));
    }

    #[test]
    fn speed_outside_range_is_rejected() {
        assert!(synthesize_tone("x", "alloy", 4.5).is_err());
        assert!(synthesize("x", "alloy", 0.1).is_err());
    }

    #[test]
    fn resample_keeps_duration_and_a_sine() {
        let input: Vec<i16> = (0..22050)
            .map(|i| {
                ((i as f64 * 2.0 * std::f64::consts::PI * 440.0 / 22050.0).sin() * 10000.0) as i16
            })
            .collect();
        let out = resample(&input, 22050, 24000).unwrap();
        assert_eq!(out.len(), 24000);
        // Compare the middle against the ideal 440 Hz sine at 24 kHz.
        let err: f64 = (1000..23000)
            .map(|i| {
                let ideal =
                    (i as f64 * 2.0 * std::f64::consts::PI * 440.0 / 24000.0).sin() * 10000.0;
                (out[i] as f64 - ideal).abs()
            })
            .fold(0.0, f64::max);
        assert!(err < 150.0, "max error {err}");
    }

    #[test]
    fn wav_parser_reads_espeak_streaming_header() {
        let mut w = Vec::new();
        w.extend_from_slice(b"RIFF\x24\xf0\xff\x7fWAVEfmt ");
        w.extend_from_slice(&16u32.to_le_bytes());
        w.extend_from_slice(&[1, 0, 1, 0]);
        w.extend_from_slice(&22050u32.to_le_bytes());
        w.extend_from_slice(&44100u32.to_le_bytes());
        w.extend_from_slice(&[2, 0, 16, 0]);
        w.extend_from_slice(b"data\x00\xf0\xff\x7f");
        w.extend_from_slice(&[1, 0, 0xff, 0xff]);
        assert_eq!(parse_wav(&w).unwrap(), (22050, vec![1, -1]));
        assert!(parse_wav(b"RIFF1234WAVEdata").is_err());
    }
}
