//! Push-based streaming Ogg demuxer (our own code): bytes in any chunking → packets,
//! each emitted as soon as its last byte has arrived.

/// One Ogg packet, emitted as soon as its last byte is in (before its page's CRC is known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The packet bytes.
    pub data: Vec<u8>,
    /// Serial number of the logical stream.
    pub serial: u32,
    /// Sequence number of the page this packet ends on.
    pub page_sequence: u32,
    /// Granule position of the page this packet ends on (`u64::MAX` = none, i.e. -1).
    pub page_granule: u64,
    /// True when no other packet ends later on the same page (the page granule is this
    /// packet's end position).
    pub last_on_page: bool,
    /// The page this packet ends on has the beginning-of-stream flag.
    pub bos: bool,
    /// The page this packet ends on has the end-of-stream flag.
    pub eos: bool,
}

/// Errors from the demuxer; each names the page (sequence number and byte offset).
#[derive(Debug, thiserror::Error)]
pub enum OggError {
    /// Placeholder until the demuxer lands.
    #[error("ogg: {0}")]
    Other(String),
}

/// The streaming demuxer.
#[derive(Debug, Default)]
pub struct Demuxer {}

impl Demuxer {
    /// A demuxer with default limits.
    pub fn new() -> Self {
        Demuxer {}
    }
    /// Consumes `bytes`, calling `emit` for every packet whose last byte is among them.
    pub fn push(&mut self, _bytes: &[u8], _emit: &mut dyn FnMut(Packet)) -> Result<(), OggError> {
        Err(OggError::Other("not yet".into()))
    }
    /// Signals end of input; errors if it ended inside a page or before any page.
    pub fn finish(&mut self) -> Result<(), OggError> {
        Err(OggError::Other("not yet".into()))
    }
}
