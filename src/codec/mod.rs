//! Encoded bytes → PCM: the streaming Ogg demuxer, the Opus decoder, raw PCM and resampling.

pub mod ogg;
pub mod opus;
pub mod pcm;
pub mod resample;

/// Format of decoded audio: interleaved signed 16-bit samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmFormat {
    /// Frames per second.
    pub rate: u32,
    /// Interleaved channels per frame.
    pub channels: u16,
}

/// Everything that can go wrong turning a response body into PCM.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The Ogg container was malformed.
    #[error(transparent)]
    Ogg(#[from] ogg::OggError),
    /// The Opus stream was malformed or undecodable.
    #[error(transparent)]
    Opus(#[from] opus::OpusError),
    /// The raw PCM stream was malformed.
    #[error(transparent)]
    Pcm(#[from] pcm::PcmError),
    /// Sample-rate conversion failed.
    #[error(transparent)]
    Resample(#[from] resample::ResampleError),
}

/// Turns one response's encoded bytes, in any chunking, into PCM as they arrive.
pub trait StreamDecoder: Send {
    /// Feeds bytes as they arrive, appending decoded interleaved samples to `out`.
    fn push(&mut self, bytes: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError>;
    /// Ends the stream: appends what is left and checks that the stream was complete.
    fn finish(&mut self, out: &mut Vec<i16>) -> Result<(), CodecError>;
    /// The output format; `None` until the stream header has been read.
    fn format(&self) -> Option<PcmFormat>;
}
