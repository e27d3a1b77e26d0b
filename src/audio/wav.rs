//! The WAV sink: writes periods to a 16-bit PCM WAV file as fast as it is fed (no pacing),
//! for `--output file.wav`, tests and offline rendering.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use super::{DeviceFormat, Sink, SinkError};

/// A 16-bit integer WAV file being written.
pub struct WavSink {
    /// `None` only after a failed write left the writer unusable.
    writer: Option<hound::WavWriter<BufWriter<File>>>,
    path: String,
    format: DeviceFormat,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink")
            .field("path", &self.path)
            .field("format", &self.format)
            .finish()
    }
}

impl WavSink {
    /// Creates (or truncates) `path` for `channels`-channel audio at `rate`; `period_frames`
    /// is the period size reported by `format()` (a file has no device buffer beyond that).
    pub fn create(
        path: &Path,
        rate: u32,
        channels: u16,
        period_frames: usize,
    ) -> Result<WavSink, SinkError> {
        let shown = path.display().to_string();
        let bad = |detail: String| SinkError::Wav {
            path: shown.clone(),
            detail,
        };
        if rate == 0 || channels == 0 || period_frames == 0 {
            return Err(bad(format!(
                "rate ({rate}), channels ({channels}) and period frames ({period_frames}) must all be above zero"
            )));
        }
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|e| bad(e.to_string()))?;
        Ok(WavSink {
            writer: Some(writer),
            path: shown,
            format: DeviceFormat {
                rate,
                channels,
                period_frames,
                buffer_frames: period_frames,
            },
        })
    }

    fn error(&self, detail: String) -> SinkError {
        SinkError::Wav {
            path: self.path.clone(),
            detail,
        }
    }
}

impl Sink for WavSink {
    fn format(&self) -> DeviceFormat {
        self.format
    }

    fn name(&self) -> &str {
        &self.path
    }

    fn is_clocked(&self) -> bool {
        false
    }

    fn write(&mut self, period: &[i16]) -> Result<(), SinkError> {
        let channels = usize::from(self.format.channels);
        if period.len() % channels != 0 {
            return Err(self.error(format!(
                "{} samples is not a whole number of {channels}-channel frames",
                period.len()
            )));
        }
        let Some(writer) = self.writer.as_mut() else {
            return Err(self.error("an earlier write failed; the file is incomplete".to_string()));
        };
        // One buffered write per period (hound's 16-bit writer, its buffer reused), not
        // one call per sample: this sink is also what `herald play --out` and the CPU
        // benchmark measure the pipeline with. The spec is always 16-bit int (`open`).
        let mut block = writer.get_i16_writer(period.len() as u32);
        for &s in period {
            block.write_sample(s);
        }
        if let Err(e) = block.flush() {
            // hound cannot continue after a failed write (e.g. disk full).
            self.writer = None;
            return Err(self.error(e.to_string()));
        }
        Ok(())
    }

    /// Updates the header and flushes, so the file is a valid WAV after every utterance; more
    /// periods may follow.
    fn drain(&mut self) -> Result<(), SinkError> {
        match self.writer.as_mut() {
            Some(w) => w.flush().map_err(|e| e.to_string()),
            None => Err("an earlier write failed; the file is incomplete".to_string()),
        }
        .map_err(|d| self.error(d))
    }
}
