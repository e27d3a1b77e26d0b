//! Headerless signed 16-bit little-endian PCM (OpenAI's `pcm` format: 24 kHz mono), in any
//! chunking, to interleaved samples in whole frames.

use super::{CodecError, PcmFormat, StreamDecoder};

/// Errors of the raw PCM path.
#[derive(Debug, thiserror::Error)]
pub enum PcmError {
    /// The stream stopped in the middle of a sample or frame.
    #[error(
        "raw PCM ended inside a frame: {bytes} dangling byte(s); s16le with {channels} \
         channel(s) needs a multiple of {frame_bytes} bytes"
    )]
    DanglingBytes {
        /// Bytes left over at the end.
        bytes: usize,
        /// Channels per frame.
        channels: u16,
        /// Bytes per whole frame.
        frame_bytes: usize,
    },
}

/// Raw s16le PCM decoder: bytes split anywhere (even inside a sample) → whole frames.
#[derive(Debug, Clone)]
pub struct RawPcmDecoder {
    format: PcmFormat,
    /// Bytes of an incomplete frame carried to the next push (fewer than one frame);
    /// allocated once with room for a whole frame.
    pending: Vec<u8>,
    pending_len: usize,
    frame_bytes: usize,
}

impl RawPcmDecoder {
    /// A decoder for `rate` Hz and `channels` interleaved channels (0 is taken as 1).
    pub fn new(rate: u32, channels: u16) -> Self {
        let channels = channels.max(1);
        let frame_bytes = 2 * usize::from(channels);
        RawPcmDecoder {
            format: PcmFormat { rate, channels },
            pending: vec![0; frame_bytes],
            pending_len: 0,
            frame_bytes,
        }
    }
}

impl StreamDecoder for RawPcmDecoder {
    fn push(&mut self, mut bytes: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
        // Complete a frame left over from the previous chunk first.
        if self.pending_len > 0 {
            let take = (self.frame_bytes - self.pending_len).min(bytes.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&bytes[..take]);
            self.pending_len += take;
            bytes = &bytes[take..];
            if self.pending_len < self.frame_bytes {
                return Ok(());
            }
            out.extend(
                self.pending[..self.frame_bytes]
                    .chunks_exact(2)
                    .map(|s| i16::from_le_bytes([s[0], s[1]])),
            );
            self.pending_len = 0;
        }
        let whole = bytes.len() / self.frame_bytes * self.frame_bytes;
        out.extend(
            bytes[..whole]
                .chunks_exact(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]])),
        );
        let rest = &bytes[whole..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
        Ok(())
    }

    /// Errors when the stream ended inside a frame (the dangling bytes are dropped).
    fn finish(&mut self, _out: &mut Vec<i16>) -> Result<(), CodecError> {
        if self.pending_len > 0 {
            let bytes = self.pending_len;
            self.pending_len = 0;
            return Err(PcmError::DanglingBytes {
                bytes,
                channels: self.format.channels,
                frame_bytes: self.frame_bytes,
            }
            .into());
        }
        Ok(())
    }

    /// Known from the start: raw PCM has no header.
    fn format(&self) -> Option<PcmFormat> {
        Some(self.format)
    }
}
