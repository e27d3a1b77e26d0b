//! Sample-rate conversion of interleaved i16 PCM with rubato's synchronous FFT resampler
//! (`FftFixedInOut`): a fixed-ratio, windowed-sinc filter applied by FFT, cheap enough for a
//! Raspberry Pi. The resampler's delay is removed and the stream's tail flushed, so a whole
//! stream of `n` frames becomes exactly `round(n × to / from)` frames, aligned in time.
//! Input is cut into fixed blocks internally, so the output does not depend on how the input
//! was chunked (bit-identical).

use rubato::Resampler as _;

use super::{CodecError, PcmFormat, StreamDecoder};

/// Target input block (frames): ~10 ms at 24 kHz; also the filter length in input samples.
const BLOCK_FRAMES: usize = 256;
/// Largest FFT block we accept; rate pairs that do not reduce to small ratios would need more.
const MAX_BLOCK_FRAMES: usize = 16384;

/// Errors from sample-rate conversion; each names the rates.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// The rates or channel count cannot be resampled.
    #[error("cannot resample {from} Hz → {to} Hz with {channels} channel(s): {reason}")]
    Setup {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// Channels.
        channels: u16,
        /// Why.
        reason: String,
    },
    /// The input was not a whole number of frames.
    #[error(
        "resampler input ({from} Hz → {to} Hz) of {samples} samples is not a whole number of \
         {channels}-channel frames"
    )]
    PartialFrame {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// Samples passed.
        samples: usize,
        /// Channels per frame.
        channels: u16,
    },
    /// rubato failed while processing.
    #[error("resampling {from} Hz → {to} Hz failed: {source}")]
    Process {
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// rubato's error.
        source: rubato::ResampleError,
    },
}

/// The FFT resampler and its block buffers (absent when the rates are equal).
struct Fft {
    rs: rubato::FftFixedInOut<f32>,
    block_in: usize,
    input: Vec<Vec<f32>>,
    output: Vec<Vec<f32>>,
    /// Frames of the current input block filled so far.
    filled: usize,
    /// Output frames still to drop to cancel the filter delay.
    to_drop: usize,
}

/// Converts interleaved i16 PCM from one rate to another, keeping length and timing exact.
pub struct Resampler {
    from: u32,
    to: u32,
    channels: u16,
    fft: Option<Fft>,
    in_frames: u64,
    out_frames: u64,
}

impl Resampler {
    /// A resampler `from_rate` → `to_rate` Hz; equal rates pass samples through untouched.
    pub fn new(from_rate: u32, to_rate: u32, channels: u16) -> Result<Self, ResampleError> {
        let setup = |reason: String| ResampleError::Setup {
            from: from_rate,
            to: to_rate,
            channels,
            reason,
        };
        if from_rate == 0 || to_rate == 0 {
            return Err(setup("rates must be above 0 Hz".into()));
        }
        if channels == 0 {
            return Err(setup("at least one channel is needed".into()));
        }
        let fft = if from_rate == to_rate {
            None
        } else {
            let g = gcd(from_rate, to_rate);
            let (min_in, min_out) = ((from_rate / g) as usize, (to_rate / g) as usize);
            if min_in.max(min_out) > MAX_BLOCK_FRAMES {
                return Err(setup(format!(
                    "the ratio reduces only to {min_in}:{min_out}, needing FFT blocks above \
                     {MAX_BLOCK_FRAMES} frames; use rates with a small ratio (e.g. 8000, 16000, \
                     22050, 24000, 32000, 44100, 48000, 96000 Hz)"
                )));
            }
            let ch = usize::from(channels);
            let rs = rubato::FftFixedInOut::<f32>::new(
                from_rate as usize,
                to_rate as usize,
                BLOCK_FRAMES,
                ch,
            )
            .map_err(|e| setup(e.to_string()))?;
            Some(Fft {
                block_in: rs.input_frames_max(),
                input: rs.input_buffer_allocate(true),
                output: rs.output_buffer_allocate(true),
                filled: 0,
                to_drop: rs.output_delay(),
                rs,
            })
        };
        Ok(Resampler {
            from: from_rate,
            to: to_rate,
            channels,
            fft,
            in_frames: 0,
            out_frames: 0,
        })
    }

    /// Resamples interleaved `input` (whole frames), appending what is ready to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) -> Result<(), ResampleError> {
        let ch = usize::from(self.channels);
        if input.len() % ch != 0 {
            return Err(ResampleError::PartialFrame {
                from: self.from,
                to: self.to,
                samples: input.len(),
                channels: self.channels,
            });
        }
        let frames = input.len() / ch;
        self.in_frames += frames as u64;
        let Some(fft) = self.fft.as_mut() else {
            out.extend_from_slice(input);
            self.out_frames += frames as u64;
            return Ok(());
        };
        let mut rest = input;
        while !rest.is_empty() {
            let take = (fft.block_in - fft.filled).min(rest.len() / ch);
            for (i, frame) in rest[..take * ch].chunks_exact(ch).enumerate() {
                for (c, &s) in frame.iter().enumerate() {
                    fft.input[c][fft.filled + i] = f32::from(s) / 32768.0;
                }
            }
            fft.filled += take;
            rest = &rest[take * ch..];
            if fft.filled == fft.block_in {
                let produced = run_block(fft, self.from, self.to, None, out)?;
                self.out_frames += produced;
            }
        }
        Ok(())
    }

    /// Ends the stream: emits the tail so the total is exactly `round(in × to / from)` frames
    /// (half up), then resets for a new stream.
    pub fn flush(&mut self, out: &mut Vec<i16>) -> Result<(), ResampleError> {
        let target = (u128::from(self.in_frames) * u128::from(self.to) + u128::from(self.from / 2))
            / u128::from(self.from);
        let target = u64::try_from(target).unwrap_or(u64::MAX);
        if let Some(fft) = self.fft.as_mut() {
            while self.out_frames < target {
                // Zero-pad the partial block; the filter's delayed tail comes out with it.
                for ch in fft.input.iter_mut() {
                    ch[fft.filled..].fill(0.0);
                }
                fft.filled = fft.block_in;
                let room = target - self.out_frames;
                self.out_frames += run_block(fft, self.from, self.to, Some(room), out)?;
            }
            fft.rs.reset();
            fft.filled = 0;
            fft.to_drop = fft.rs.output_delay();
        }
        self.in_frames = 0;
        self.out_frames = 0;
        Ok(())
    }
}

/// Resamples one full input block, dropping the delay and at most `room` frames kept.
fn run_block(
    fft: &mut Fft,
    from: u32,
    to: u32,
    room: Option<u64>,
    out: &mut Vec<i16>,
) -> Result<u64, ResampleError> {
    let (_, n) = fft
        .rs
        .process_into_buffer(&fft.input, &mut fft.output, None)
        .map_err(|source| ResampleError::Process { from, to, source })?;
    fft.filled = 0;
    let skip = fft.to_drop.min(n);
    fft.to_drop -= skip;
    let mut end = n;
    if let Some(room) = room {
        end = end.min(skip.saturating_add(usize::try_from(room).unwrap_or(usize::MAX)));
    }
    for i in skip..end {
        for ch in &fft.output {
            out.push(to_i16(ch[i]));
        }
    }
    Ok((end - skip) as u64)
}

fn to_i16(x: f32) -> i16 {
    (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Wraps a [`StreamDecoder`] and resamples its output to a fixed rate (pass-through when the
/// decoded rate already matches), e.g. OpenAI's 24 kHz PCM for a 48 kHz-only device.
pub struct ResampledDecoder<D> {
    inner: D,
    to_rate: u32,
    resampler: Option<Resampler>,
    decoded: Vec<i16>,
}

impl<D: StreamDecoder> ResampledDecoder<D> {
    /// Resamples `inner`'s output to `to_rate` Hz.
    pub fn new(inner: D, to_rate: u32) -> Self {
        ResampledDecoder {
            inner,
            to_rate,
            resampler: None,
            decoded: Vec::new(),
        }
    }

    fn convert(&mut self, out: &mut Vec<i16>) -> Result<(), ResampleError> {
        if self.resampler.is_none() {
            match self.inner.format() {
                Some(f) => self.resampler = Some(Resampler::new(f.rate, self.to_rate, f.channels)?),
                None => {
                    // No header yet means no samples yet either.
                    out.append(&mut self.decoded);
                    return Ok(());
                }
            }
        }
        if let Some(r) = self.resampler.as_mut() {
            r.process(&self.decoded, out)?;
        }
        self.decoded.clear();
        Ok(())
    }
}

impl<D: StreamDecoder> StreamDecoder for ResampledDecoder<D> {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
        let pushed = self.inner.push(bytes, &mut self.decoded);
        self.convert(out)?;
        pushed
    }

    fn finish(&mut self, out: &mut Vec<i16>) -> Result<(), CodecError> {
        let finished = self.inner.finish(&mut self.decoded);
        self.convert(out)?;
        if let Some(r) = self.resampler.as_mut() {
            r.flush(out)?;
        }
        finished
    }

    fn format(&self) -> Option<PcmFormat> {
        self.inner.format().map(|f| PcmFormat {
            rate: self.to_rate,
            channels: f.channels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_passes_through() {
        let mut r = Resampler::new(24000, 24000, 1).unwrap();
        let input: Vec<i16> = (0..1000).map(|i| (i * 7) as i16).collect();
        let mut out = Vec::new();
        r.process(&input, &mut out).unwrap();
        r.flush(&mut out).unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn rejects_bad_setups_naming_rates() {
        let e = Resampler::new(0, 48000, 1).err().unwrap().to_string();
        assert!(e.contains("0 Hz → 48000 Hz"), "{e}");
        let e = Resampler::new(44101, 48000, 1).err().unwrap().to_string();
        assert!(e.contains("44101 Hz"), "{e}");
        let mut r = Resampler::new(24000, 48000, 2).unwrap();
        let e = r
            .process(&[1, 2, 3], &mut Vec::new())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("2-channel"), "{e}");
    }
}
