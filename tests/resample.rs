//! Sample-rate conversion (rubato FFT resampler) and the raw PCM path (OpenAI's 24 kHz s16le)
//! as a device that cannot take 24 kHz would get it.

use herald::codec::pcm::RawPcmDecoder;
use herald::codec::resample::{ResampledDecoder, Resampler};
use herald::codec::{CodecError, PcmFormat, StreamDecoder};

const AMPLITUDE: f64 = 10000.0;

/// `frames` frames of a sine per channel (`freqs[c]` Hz), interleaved.
fn sine(rate: u32, freqs: &[f64], frames: usize) -> Vec<i16> {
    let mut out = Vec::with_capacity(frames * freqs.len());
    for i in 0..frames {
        for f in freqs {
            let t = i as f64 / rate as f64;
            out.push((AMPLITUDE * (2.0 * std::f64::consts::PI * f * t).sin()).round() as i16);
        }
    }
    out
}

fn resample_chunked(
    from: u32,
    to: u32,
    channels: u16,
    input: &[i16],
    chunk_frames: usize,
) -> Vec<i16> {
    let mut r = Resampler::new(from, to, channels).unwrap();
    let mut out = Vec::new();
    for chunk in input.chunks(chunk_frames * channels as usize) {
        r.process(chunk, &mut out).unwrap();
    }
    r.flush(&mut out).unwrap();
    out
}

/// Largest deviation from the ideal sine over the middle of the output (edges ring, as the
/// test signal starts and stops abruptly).
fn max_error(out: &[i16], rate: u32, freqs: &[f64]) -> f64 {
    let ch = freqs.len();
    let frames = out.len() / ch;
    let margin = rate as usize / 20;
    let mut worst = 0.0f64;
    for i in margin..frames - margin {
        for (c, f) in freqs.iter().enumerate() {
            let t = i as f64 / rate as f64;
            let ideal = AMPLITUDE * (2.0 * std::f64::consts::PI * f * t).sin();
            worst = worst.max((out[i * ch + c] as f64 - ideal).abs());
        }
    }
    worst
}

fn zero_crossings(out: &[i16], ch: usize, c: usize) -> usize {
    let s: Vec<i16> = out.iter().skip(c).step_by(ch).copied().collect();
    s.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count()
}

#[test]
fn exact_length_same_frequency_and_no_time_shift() {
    // 1.2345 s so the length needs rounding at 44.1 kHz.
    for (from, to) in [
        (24000, 48000),
        (48000, 44100),
        (24000, 44100),
        (48000, 16000),
    ] {
        let frames = (from as f64 * 1.2345) as usize;
        let input = sine(from, &[1000.0], frames);
        let out = resample_chunked(from, to, 1, &input, 480);
        let want = (frames as u64 * to as u64 + from as u64 / 2) / from as u64;
        assert_eq!(
            out.len() as u64,
            want,
            "{from} → {to}: round(in × to / from)"
        );
        // A shift of one output sample would be an error of ≥ 13% of the amplitude at 1 kHz
        // (2π·1000/48000); this bound (0.1%) allows about a hundredth of a sample.
        let err = max_error(&out, to, &[1000.0]);
        assert!(err < AMPLITUDE * 0.001, "{from} → {to}: max error {err}");
        let zc = zero_crossings(&out, 1, 0) as f64;
        let expected = 2.0 * 1000.0 * frames as f64 / from as f64;
        assert!(
            (zc - expected).abs() <= 2.0,
            "{from} → {to}: {zc} crossings, want {expected}"
        );
    }
}

#[test]
fn output_is_identical_whatever_the_chunking() {
    let input = sine(24000, &[440.0, 1000.0], 24000);
    let whole = resample_chunked(24000, 44100, 2, &input, input.len());
    for chunk in [1, 7, 255, 333, 4096] {
        assert_eq!(
            resample_chunked(24000, 44100, 2, &input, chunk),
            whole,
            "{chunk}-frame chunks"
        );
    }
}

#[test]
fn stereo_channels_stay_apart() {
    let input = sine(48000, &[440.0, 1000.0], 48000);
    let out = resample_chunked(48000, 44100, 2, &input, 1024);
    assert_eq!(out.len(), 2 * 44100);
    assert!(max_error(&out, 44100, &[440.0, 1000.0]) < AMPLITUDE * 0.001);
    assert!((zero_crossings(&out, 2, 0) as i64 - 880).abs() <= 2);
    assert!((zero_crossings(&out, 2, 1) as i64 - 2000).abs() <= 2);
}

#[test]
fn flush_resets_for_the_next_stream() {
    let input = sine(24000, &[1000.0], 5000);
    let mut r = Resampler::new(24000, 48000, 1).unwrap();
    let (mut a, mut b, mut empty) = (Vec::new(), Vec::new(), Vec::new());
    r.process(&input, &mut a).unwrap();
    r.flush(&mut a).unwrap();
    r.flush(&mut empty).unwrap();
    r.process(&input, &mut b).unwrap();
    r.flush(&mut b).unwrap();
    assert_eq!(a.len(), 10000);
    assert_eq!(a, b);
    assert!(empty.is_empty(), "an empty stream yields nothing");
}

fn bytes_of(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

#[test]
fn raw_pcm_in_odd_splits_gives_the_same_samples() {
    let samples = sine(24000, &[440.0, 1000.0], 2000);
    let bytes = bytes_of(&samples);
    for split in [1, 3, 5, 1001] {
        let mut d = RawPcmDecoder::new(24000, 2);
        assert_eq!(
            d.format(),
            Some(PcmFormat {
                rate: 24000,
                channels: 2
            })
        );
        let mut out = Vec::new();
        for chunk in bytes.chunks(split) {
            d.push(chunk, &mut out).unwrap();
            assert_eq!(out.len() % 2, 0, "only whole frames are delivered");
        }
        d.finish(&mut out).unwrap();
        assert_eq!(out, samples, "{split}-byte chunks");
    }
}

#[test]
fn raw_pcm_ending_inside_a_sample_is_an_error() {
    let mut d = RawPcmDecoder::new(24000, 1);
    let mut out = Vec::new();
    d.push(&[1, 0, 2, 0, 3], &mut out).unwrap();
    assert_eq!(out, [1, 2]);
    match d.finish(&mut out) {
        Err(CodecError::Pcm(e)) => {
            let msg = e.to_string();
            assert!(
                msg.contains("1 dangling byte") && msg.contains("multiple of 2 bytes"),
                "{msg}"
            );
        }
        other => panic!("expected a dangling-byte error, got {other:?}"),
    }
}

#[test]
fn openai_pcm_to_a_48k_device() {
    // The PCM path: 24 kHz s16le mono in network-sized odd chunks → 48 kHz for the device.
    let samples = sine(24000, &[1000.0], 24000 + 123);
    let bytes = bytes_of(&samples);
    let mut d = ResampledDecoder::new(RawPcmDecoder::new(24000, 1), 48000);
    assert_eq!(
        d.format(),
        Some(PcmFormat {
            rate: 48000,
            channels: 1
        })
    );
    let mut out = Vec::new();
    for chunk in bytes.chunks(1777) {
        d.push(chunk, &mut out).unwrap();
    }
    d.finish(&mut out).unwrap();
    assert_eq!(out, resample_chunked(24000, 48000, 1, &samples, 100));
    assert_eq!(out.len(), 2 * samples.len());
}

#[test]
fn same_rate_passes_through_untouched() {
    let samples = sine(24000, &[1000.0], 3000);
    let mut d = ResampledDecoder::new(RawPcmDecoder::new(24000, 1), 24000);
    let mut out = Vec::new();
    d.push(&bytes_of(&samples), &mut out).unwrap();
    d.finish(&mut out).unwrap();
    assert_eq!(out, samples);
}
