//! Ogg Opus (RFC 7845) on top of the system libopus: OpusHead parsing, a packet-level decoder
//! (pre-skip, end trimming, output gain, loss concealment) and the byte-level `StreamDecoder`.
//!
//! Time bookkeeping: Ogg Opus granule positions and the pre-skip count 48 kHz samples. At an
//! output rate `r` one output frame is `k = 48000 / r` such samples (k ∈ {1, 2, 3, 4, 6}), and a
//! 48 kHz count `x` is converted with one rounding rule everywhere: [`OpusPacketDecoder::scale`]
//! = `(x + k/2) / k` (round half up). The decoder drops `scale(pre_skip)` frames at the start and
//! plays exactly `scale(final_granule − start_offset − pre_skip)` frames, so a file's decoded
//! length is exact at every Opus rate.

use super::ogg::{Demuxer, Packet};
use super::{CodecError, PcmFormat, StreamDecoder};

/// The sample rates libopus can decode to directly (Hz).
pub const OPUS_RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];

/// The rate to decode Opus at for a device running at `device_rate`: the device rate itself
/// when libopus can produce it (no resampling), otherwise 48 kHz (Opus's native rate), which
/// the caller then resamples to the device rate.
pub fn decode_rate_for(device_rate: u32) -> u32 {
    if OPUS_RATES.contains(&device_rate) {
        device_rate
    } else {
        48000
    }
}

/// Granule position "none" (-1) as carried in [`Packet::page_granule`].
const NO_GRANULE: u64 = u64::MAX;
/// Longest Opus packet: 120 ms at 48 kHz.
const MAX_PACKET_48K: usize = 5760;
/// Duration assumed for an empty packet before any packet has been decoded (20 ms).
const DEFAULT_PACKET_48K: u64 = 960;

/// Everything that can be wrong with an Ogg Opus stream or its decoding.
#[derive(Debug, thiserror::Error)]
pub enum OpusError {
    /// The requested output rate is not one libopus decodes to.
    #[error(
        "cannot decode Opus at {rate} Hz: allowed output rates are 8000, 12000, 16000, 24000 \
         and 48000 Hz (decode at 48000 Hz and resample for other device rates)"
    )]
    UnsupportedRate {
        /// The rate asked for.
        rate: u32,
    },
    /// The first packet of the stream is not an OpusHead.
    #[error("not an Opus stream: first packet starts with {start} (expected \"OpusHead\")")]
    NotOpus {
        /// The first bytes, printable ASCII kept and the rest escaped.
        start: String,
    },
    /// The OpusHead packet is shorter than its fields require.
    #[error("OpusHead is {len} bytes long; {need} bytes are required ({what})")]
    HeadTooShort {
        /// Actual length.
        len: usize,
        /// Length the header needs.
        need: usize,
        /// What the bytes are needed for.
        what: &'static str,
    },
    /// The OpusHead version is not one we understand.
    #[error("unsupported OpusHead version {version}: only version 1 (RFC 7845) is accepted")]
    UnsupportedVersion {
        /// The version byte.
        version: u8,
    },
    /// The channel count is 0 or more than we can play.
    #[error("OpusHead declares {channels} channels: allowed are 1 (mono) or 2 (stereo)")]
    UnsupportedChannels {
        /// The channel count byte.
        channels: u8,
    },
    /// A channel mapping family other than 0 or 1.
    #[error(
        "unsupported Opus channel mapping family {family}: allowed are 0 (mono/stereo) and 1 \
         (Vorbis order, here with at most 2 channels)"
    )]
    UnsupportedMappingFamily {
        /// The family byte.
        family: u8,
    },
    /// A family-1 mapping table that needs more than one plain Opus stream.
    #[error(
        "unsupported Opus channel mapping table (family 1): {streams} stream(s), {coupled} \
         coupled, mapping {mapping:?}; only a single stream in natural order can be decoded \
         (mono: 1 stream, 0 coupled, [0]; stereo: 1 stream, 1 coupled, [0, 1])"
    )]
    UnsupportedMappingTable {
        /// Stream count.
        streams: u8,
        /// Coupled stream count.
        coupled: u8,
        /// Channel mapping bytes.
        mapping: Vec<u8>,
    },
    /// The second packet of the stream is not OpusTags.
    #[error(
        "invalid Opus stream: the packet after OpusHead (page {page}) starts with {start}; \
         expected \"OpusTags\""
    )]
    NotTags {
        /// The first bytes of the packet, escaped.
        start: String,
        /// Page sequence number it ended on.
        page: u32,
    },
    /// libopus could not create a decoder.
    #[error("libopus cannot create a decoder for {rate} Hz, {channels} channel(s): {source}")]
    Decoder {
        /// Output rate.
        rate: u32,
        /// Channels.
        channels: u8,
        /// The libopus error.
        source: ::opus::Error,
    },
    /// libopus rejected an audio packet (or its gain setting).
    #[error("corrupt Opus packet #{index} (ending on page {page}, {len} bytes): {source}")]
    Corrupt {
        /// Index of the packet in its logical stream (0 = OpusHead).
        index: u64,
        /// Page sequence number the packet ended on.
        page: u32,
        /// Packet length in bytes.
        len: usize,
        /// The libopus error.
        source: ::opus::Error,
    },
    /// The first audio page claims fewer samples than its packets hold.
    #[error(
        "invalid Opus stream: first audio page {page} has granule position {granule}, less \
         than the {samples} samples (48 kHz) its packets hold; RFC 7845 §4.3 allows that only \
         on the last page"
    )]
    BadFirstGranule {
        /// Page sequence number.
        page: u32,
        /// Its granule position.
        granule: u64,
        /// Samples in the packets ending on it.
        samples: u64,
    },
    /// The input ended before the stream's end-of-stream page.
    #[error(
        "the Opus stream ended early: {what} (after {packets} audio packets; an Ogg Opus \
         stream must end with an end-of-stream page)"
    )]
    Truncated {
        /// What was still missing.
        what: &'static str,
        /// Audio packets decoded before the end.
        packets: u64,
    },
}

/// The identification header of an Ogg Opus stream (RFC 7845 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusHead {
    /// Encapsulation version (1 today; 1–15 are compatible).
    pub version: u8,
    /// Output channel count.
    pub channels: u8,
    /// Samples (48 kHz) to drop from the start of the decoded audio.
    pub pre_skip: u16,
    /// Sample rate of the encoder's input (informational only).
    pub input_rate: u32,
    /// Gain to apply to the output, Q7.8 dB.
    pub output_gain: i16,
    /// Channel mapping family (0 or 1 supported).
    pub mapping_family: u8,
}

impl OpusHead {
    /// Parses and validates an OpusHead packet; errors say what is wrong and what is allowed.
    pub fn parse(data: &[u8]) -> Result<OpusHead, OpusError> {
        if !data.starts_with(b"OpusHead") {
            return Err(OpusError::NotOpus {
                start: escape_start(data),
            });
        }
        if data.len() < 19 {
            return Err(OpusError::HeadTooShort {
                len: data.len(),
                need: 19,
                what: "magic, version, channels, pre-skip, input rate, gain, mapping family",
            });
        }
        let head = OpusHead {
            version: data[8],
            channels: data[9],
            pre_skip: u16::from_le_bytes([data[10], data[11]]),
            input_rate: u32::from_le_bytes([data[12], data[13], data[14], data[15]]),
            output_gain: i16::from_le_bytes([data[16], data[17]]),
            mapping_family: data[18],
        };
        // Only version 1 exists; RFC 7845 §5.1 would let 2..=15 through as compatible, but a
        // stream claiming a version nobody has specified is more likely corrupt than new.
        if head.version != 1 {
            return Err(OpusError::UnsupportedVersion {
                version: head.version,
            });
        }
        if head.channels == 0 || head.channels > 2 {
            return Err(OpusError::UnsupportedChannels {
                channels: head.channels,
            });
        }
        match head.mapping_family {
            0 => {}
            1 => {
                let need = 21 + head.channels as usize;
                if data.len() < need {
                    return Err(OpusError::HeadTooShort {
                        len: data.len(),
                        need,
                        what: "the channel mapping table of family 1",
                    });
                }
                let (streams, coupled) = (data[19], data[20]);
                let mapping = &data[21..need];
                let natural = streams == 1
                    && coupled == head.channels - 1
                    && mapping.iter().enumerate().all(|(i, &m)| m as usize == i);
                if !natural {
                    return Err(OpusError::UnsupportedMappingTable {
                        streams,
                        coupled,
                        mapping: mapping.to_vec(),
                    });
                }
            }
            family => return Err(OpusError::UnsupportedMappingFamily { family }),
        }
        Ok(head)
    }
}

/// Counters describing one decoded stream; frame counts are per channel at the output rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpusStats {
    /// Audio packets handled (decoded or, when empty, concealed).
    pub packets: u64,
    /// Frames synthesised by packet-loss concealment (lost pages and empty packets).
    pub concealed_frames: u64,
    /// Number of concealment events (each lost stretch or empty packet counts once).
    pub concealments: u64,
    /// Frames dropped at the start (pre-skip).
    pub preskipped_frames: u64,
    /// Frames dropped at the end (end trimming to the final granule position).
    pub trimmed_frames: u64,
    /// Frames appended to the output.
    pub output_frames: u64,
    /// Packets ignored because they belong to another logical stream or follow the EOS.
    pub ignored_packets: u64,
    /// Start offset implied by the first audio page's granule (48 kHz samples; RFC 7845 §4.3).
    pub start_offset_48k: u64,
}

/// State of one logical Opus stream once its OpusHead is known.
struct Stream {
    head: OpusHead,
    decoder: ::opus::Decoder,
    serial: u32,
    channels: usize,
    /// 48 kHz samples per output frame.
    k: u64,
    /// Decode buffer for the longest packet (120 ms), reused for every packet.
    scratch: Vec<i16>,
    tags_done: bool,
    ended: bool,
    /// Packets of this stream seen so far (0 = OpusHead); used to name packets in errors.
    packet_index: u64,
    /// Page sequence number of the last header packet (OpusTags).
    header_page: u32,
    /// Output frames produced by libopus so far (decoded + concealed, before skip/trim).
    produced: u64,
    /// Output frames to drop at the start.
    skip: u64,
    /// Granule of the EOS page, once its first packet is in.
    eos_granule: u64,
    /// Start offset (48 kHz), known once the first audio page's last packet is in.
    start_offset: Option<u64>,
    /// Duration of the previous packet (48 kHz), for concealing an empty packet.
    last_duration: u64,
    /// Page the current packet ends on; `None` before the first audio packet.
    page: Option<u32>,
    page_granule: u64,
    /// Granule of the page before the current one.
    prev_page_granule: u64,
    /// 48 kHz samples in the packets of the current page so far.
    page_samples: u64,
    first_page: bool,
    /// After a page-sequence gap, the page's packets are held until its last one is in, so the
    /// missing duration (from granules) can be concealed before they are decoded.
    holding: bool,
    held: Vec<u8>,
    /// (length, packet index) of each held packet, in order.
    held_meta: Vec<(usize, u64)>,
    stats: OpusStats,
}

impl Stream {
    fn scale(&self, x48: u64) -> u64 {
        scale(x48, self.k)
    }

    /// Frame limit once the EOS granule is known.
    fn limit(&self) -> Option<u64> {
        if self.eos_granule == NO_GRANULE {
            return None;
        }
        let playable = self
            .eos_granule
            .saturating_sub(self.start_offset.unwrap_or(0))
            .saturating_sub(u64::from(self.head.pre_skip));
        Some(self.scale(playable))
    }

    /// Appends `scratch[..n]` frames to `out`, dropping pre-skip and anything past the end.
    fn emit(&mut self, n: usize, out: &mut Vec<i16>) {
        let n64 = n as u64;
        let from = self.skip.saturating_sub(self.produced).min(n64);
        self.stats.preskipped_frames += from;
        self.produced += n64;
        let mut to = n64;
        if let Some(limit) = self.limit() {
            let room = limit.saturating_sub(self.stats.output_frames);
            if to - from > room {
                self.stats.trimmed_frames += to - from - room;
                to = from + room;
            }
        }
        let ch = self.channels;
        out.extend_from_slice(&self.scratch[from as usize * ch..to as usize * ch]);
        self.stats.output_frames += to - from;
    }

    /// Synthesises `frames` output frames with libopus packet-loss concealment.
    fn conceal(
        &mut self,
        frames: u64,
        index: u64,
        page: u32,
        out: &mut Vec<i16>,
    ) -> Result<(), OpusError> {
        if frames == 0 {
            return Ok(());
        }
        self.stats.concealments += 1;
        // libopus conceals in multiples of 2.5 ms; the surplus of the last step is dropped.
        let step = (120 / self.k) as usize;
        let max = MAX_PACKET_48K / self.k as usize;
        let mut left = frames;
        while left > 0 {
            let want = (left.min(max as u64) as usize).div_ceil(step) * step;
            let n = self
                .decoder
                .decode(&[], &mut self.scratch[..want * self.channels], false)
                .map_err(|source| OpusError::Corrupt {
                    index,
                    page,
                    len: 0,
                    source,
                })?;
            if n == 0 {
                break;
            }
            let keep = (n as u64).min(left);
            self.stats.concealed_frames += keep;
            self.emit(keep as usize, out);
            left -= keep;
        }
        Ok(())
    }

    /// Decodes one packet (an empty one is concealed as one frame of the previous duration).
    fn decode(
        &mut self,
        data: &[u8],
        index: u64,
        page: u32,
        out: &mut Vec<i16>,
    ) -> Result<(), OpusError> {
        self.stats.packets += 1;
        if data.is_empty() {
            let frames = self.last_duration / self.k;
            return self.conceal(frames, index, page, out);
        }
        let n = self
            .decoder
            .decode(data, &mut self.scratch, false)
            .map_err(|source| OpusError::Corrupt {
                index,
                page,
                len: data.len(),
                source,
            })?;
        self.last_duration = n as u64 * self.k;
        self.emit(n, out);
        Ok(())
    }

    fn audio(&mut self, p: &Packet, out: &mut Vec<i16>) -> Result<(), OpusError> {
        let index = self.packet_index;
        if self.page != Some(p.page_sequence) {
            self.first_page = self.page.is_none();
            let prev_seq = self.page.unwrap_or(self.header_page);
            self.prev_page_granule = if self.first_page {
                0
            } else {
                self.page_granule
            };
            self.page = Some(p.page_sequence);
            self.page_granule = p.page_granule;
            self.page_samples = 0;
            // A packet spanning pages also skips sequence numbers; the granule check in
            // `resolve_gap` tells the two apart (it conceals nothing for a spanning packet).
            let gap = p.page_sequence > prev_seq.saturating_add(1);
            self.holding = gap && p.page_granule != NO_GRANULE;
        }
        if p.eos && p.page_granule != NO_GRANULE {
            self.eos_granule = p.page_granule;
        }
        let duration = if p.data.is_empty() {
            self.last_duration
        } else {
            ::opus::packet::get_nb_samples(&p.data, 48000).map_err(|source| OpusError::Corrupt {
                index,
                page: p.page_sequence,
                len: p.data.len(),
                source,
            })? as u64
        };
        self.page_samples += duration;
        if self.holding {
            self.held.extend_from_slice(&p.data);
            self.held_meta.push((p.data.len(), index));
            if p.last_on_page {
                self.resolve_gap(p.page_sequence, out)?;
            }
        } else {
            if self.first_page && p.last_on_page {
                self.set_start_offset(p)?;
            }
            self.decode(&p.data, index, p.page_sequence, out)?;
        }
        Ok(())
    }

    /// At the last packet of the first audio page: the granule beyond the packets' total is
    /// the stream's start offset (RFC 7845 §4.3). It is not played as silence; it only moves
    /// the end, so the output stays `final − offset − pre-skip` long.
    fn set_start_offset(&mut self, p: &Packet) -> Result<(), OpusError> {
        if p.page_granule == NO_GRANULE {
            return Ok(());
        }
        if p.page_granule >= self.page_samples {
            let offset = p.page_granule - self.page_samples;
            self.start_offset = Some(offset);
            self.stats.start_offset_48k = offset;
        } else if p.eos {
            // A single-page stream trimmed at the end.
            self.start_offset = Some(0);
        } else {
            return Err(OpusError::BadFirstGranule {
                page: p.page_sequence,
                granule: p.page_granule,
                samples: self.page_samples,
            });
        }
        Ok(())
    }

    /// All packets of the page after a sequence gap are in: conceal what the granules say is
    /// missing, then decode the held packets.
    fn resolve_gap(&mut self, page: u32, out: &mut Vec<i16>) -> Result<(), OpusError> {
        self.holding = false;
        let start = self.page_granule.saturating_sub(self.page_samples);
        // On an EOS page the granule may be trimmed, which can only understate the gap.
        let missing = if self.prev_page_granule == NO_GRANULE {
            0
        } else {
            start.saturating_sub(self.prev_page_granule)
        };
        if self.first_page {
            // The start is concealed rather than treated as an offset.
            self.start_offset = Some(0);
        }
        let first_index = self.held_meta.first().map_or(self.packet_index, |m| m.1);
        let frames = self.scale(missing);
        self.conceal(frames, first_index, page, out)?;
        let held = std::mem::take(&mut self.held);
        let meta = std::mem::take(&mut self.held_meta);
        let mut at = 0;
        let mut result = Ok(());
        for &(len, index) in &meta {
            result = self.decode(&held[at..at + len], index, page, out);
            if result.is_err() {
                break;
            }
            at += len;
        }
        // Give the buffers back so their capacity is reused.
        self.held = held;
        self.held.clear();
        self.held_meta = meta;
        self.held_meta.clear();
        result
    }
}

fn scale(x48: u64, k: u64) -> u64 {
    (x48 + k / 2) / k
}

/// The first bytes of a packet for an error message: printable ASCII kept, the rest escaped.
fn escape_start(data: &[u8]) -> String {
    if data.is_empty() {
        return "nothing (empty packet)".to_string();
    }
    let shown: String = data
        .iter()
        .take(8)
        .flat_map(|b| b.escape_ascii())
        .map(char::from)
        .collect();
    format!("\"{shown}\"{}", if data.len() > 8 { "…" } else { "" })
}

/// Packet-level Ogg Opus decoder: OpusHead → OpusTags → audio packets → interleaved i16 PCM.
///
/// Only the first logical stream (the serial of the first packet) is decoded; packets of other
/// serials, and anything after its end-of-stream page (e.g. a chained stream), are ignored and
/// counted in [`OpusStats::ignored_packets`].
pub struct OpusPacketDecoder {
    output_rate: u32,
    stream: Option<Stream>,
}

impl OpusPacketDecoder {
    /// A decoder producing `output_rate` Hz, which must be one of [`OPUS_RATES`].
    pub fn new(output_rate: u32) -> Result<Self, OpusError> {
        if !OPUS_RATES.contains(&output_rate) {
            return Err(OpusError::UnsupportedRate { rate: output_rate });
        }
        Ok(OpusPacketDecoder {
            output_rate,
            stream: None,
        })
    }

    /// The output rate given to [`OpusPacketDecoder::new`].
    pub fn output_rate(&self) -> u32 {
        self.output_rate
    }

    /// Handles one demuxed packet, appending decoded interleaved samples to `out`.
    pub fn packet(&mut self, p: &Packet, out: &mut Vec<i16>) -> Result<(), OpusError> {
        let Some(stream) = self.stream.as_mut() else {
            let head = OpusHead::parse(&p.data)?;
            self.stream = Some(self.open(head, p)?);
            return Ok(());
        };
        if p.serial != stream.serial || stream.ended {
            stream.stats.ignored_packets += 1;
            return Ok(());
        }
        stream.packet_index += 1;
        if !stream.tags_done {
            if !p.data.starts_with(b"OpusTags") {
                return Err(OpusError::NotTags {
                    start: escape_start(&p.data),
                    page: p.page_sequence,
                });
            }
            stream.tags_done = true;
            stream.header_page = p.page_sequence;
        } else {
            stream.audio(p, out)?;
        }
        if p.eos && p.last_on_page {
            stream.ended = true;
        }
        Ok(())
    }

    fn open(&self, head: OpusHead, p: &Packet) -> Result<Stream, OpusError> {
        let channels = if head.channels == 2 {
            ::opus::Channels::Stereo
        } else {
            ::opus::Channels::Mono
        };
        let decoder_error = |source| OpusError::Decoder {
            rate: self.output_rate,
            channels: head.channels,
            source,
        };
        let mut decoder =
            ::opus::Decoder::new(self.output_rate, channels).map_err(decoder_error)?;
        // libopus applies the Q7.8 dB gain itself, with saturation.
        decoder
            .set_gain(i32::from(head.output_gain))
            .map_err(decoder_error)?;
        let k = u64::from(48000 / self.output_rate);
        let ch = usize::from(head.channels);
        Ok(Stream {
            decoder,
            serial: p.serial,
            channels: ch,
            k,
            scratch: vec![0; MAX_PACKET_48K / k as usize * ch],
            tags_done: false,
            // An EOS on the OpusHead page leaves the stream without tags: `finish` reports it.
            ended: false,
            packet_index: 0,
            header_page: p.page_sequence,
            produced: 0,
            skip: scale(u64::from(head.pre_skip), k),
            eos_granule: NO_GRANULE,
            start_offset: None,
            last_duration: DEFAULT_PACKET_48K,
            page: None,
            page_granule: NO_GRANULE,
            prev_page_granule: NO_GRANULE,
            page_samples: 0,
            first_page: false,
            holding: false,
            held: Vec::new(),
            held_meta: Vec::new(),
            stats: OpusStats::default(),
            head,
        })
    }

    /// Ends the stream; errors if the input stopped before the stream's end-of-stream page.
    pub fn finish(&mut self, _out: &mut Vec<i16>) -> Result<(), OpusError> {
        let Some(stream) = self.stream.as_ref() else {
            return Err(OpusError::Truncated {
                what: "no OpusHead packet arrived",
                packets: 0,
            });
        };
        if stream.ended {
            return Ok(());
        }
        let what = if !stream.tags_done {
            "it stopped after OpusHead, before OpusTags"
        } else if stream.holding {
            "it stopped inside the page after a lost page"
        } else {
            "it stopped before the end-of-stream page"
        };
        Err(OpusError::Truncated {
            what,
            packets: stream.stats.packets,
        })
    }

    /// The stream's OpusHead once its first packet has been parsed.
    pub fn head(&self) -> Option<&OpusHead> {
        self.stream.as_ref().map(|s| &s.head)
    }

    /// Counters so far (all zero before the OpusHead).
    pub fn stats(&self) -> OpusStats {
        self.stream
            .as_ref()
            .map_or(OpusStats::default(), |s| s.stats)
    }
}

/// Ogg Opus bytes in any chunking → PCM at a fixed Opus output rate: the streaming [`Demuxer`]
/// feeding an [`OpusPacketDecoder`]. Only the first logical stream is decoded.
pub struct OggOpusDecoder {
    demuxer: Demuxer,
    decoder: OpusPacketDecoder,
}

impl OggOpusDecoder {
    /// A decoder producing `output_rate` Hz, which must be one of [`OPUS_RATES`].
    pub fn new(output_rate: u32) -> Result<Self, OpusError> {
        Ok(OggOpusDecoder {
            demuxer: Demuxer::new(),
            decoder: OpusPacketDecoder::new(output_rate)?,
        })
    }

    /// The packet decoder's counters.
    pub fn stats(&self) -> OpusStats {
        self.decoder.stats()
    }

    /// The stream's OpusHead once parsed.
    pub fn head(&self) -> Option<&OpusHead> {
        self.decoder.head()
    }
}

/// After an error the stream should be abandoned: the decoder does not recover mid-stream.
impl StreamDecoder for OggOpusDecoder {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
        let decoder = &mut self.decoder;
        let mut failed: Option<OpusError> = None;
        self.demuxer.push(bytes, &mut |p: Packet| {
            if failed.is_none() {
                if let Err(e) = decoder.packet(&p, out) {
                    failed = Some(e);
                }
            }
        })?;
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    fn finish(&mut self, out: &mut Vec<i16>) -> Result<(), CodecError> {
        self.demuxer.finish()?;
        self.decoder.finish(out)?;
        Ok(())
    }

    fn format(&self) -> Option<PcmFormat> {
        self.decoder.head().map(|h| PcmFormat {
            rate: self.decoder.output_rate(),
            channels: u16::from(h.channels),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_bytes(version: u8, channels: u8, family: u8) -> Vec<u8> {
        let mut h = b"OpusHead".to_vec();
        h.extend_from_slice(&[version, channels]);
        h.extend_from_slice(&312u16.to_le_bytes());
        h.extend_from_slice(&24000u32.to_le_bytes());
        h.extend_from_slice(&0i16.to_le_bytes());
        h.push(family);
        h
    }

    #[test]
    fn parses_openai_head() {
        let h = OpusHead::parse(&head_bytes(1, 1, 0)).unwrap();
        assert_eq!(
            h,
            OpusHead {
                version: 1,
                channels: 1,
                pre_skip: 312,
                input_rate: 24000,
                output_gain: 0,
                mapping_family: 0
            }
        );
    }

    #[test]
    fn decodes_at_the_device_rate_when_libopus_can() {
        assert_eq!(decode_rate_for(48000), 48000);
        assert_eq!(decode_rate_for(16000), 16000);
        assert_eq!(decode_rate_for(44100), 48000);
        assert_eq!(decode_rate_for(96000), 48000);
    }

    #[test]
    fn scale_rounds_half_up() {
        // 24 kHz: k = 2; 16 kHz: k = 3.
        assert_eq!(scale(312, 2), 156);
        assert_eq!(scale(313, 2), 157);
        assert_eq!(scale(312, 3), 104);
        assert_eq!(scale(313, 3), 104);
        assert_eq!(scale(314, 3), 105);
    }

    #[test]
    fn escapes_binary_start() {
        assert_eq!(escape_start(b"{\"error\":1}"), "\"{\\\"error\\\"\"…");
        assert_eq!(escape_start(&[0, 255]), "\"\\x00\\xff\"");
    }
}
