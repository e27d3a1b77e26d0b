//! 24 kHz PCM → Ogg Opus in the layout OpenAI's `opus` responses use.

use std::ops::Range;

use ogg::writing::{PacketWriteEndInfo, PacketWriter};
use opus::{Application, Bitrate, Channels, Encoder};

use crate::EmulatorError;

/// Samples per 20 ms packet at 24 kHz.
const FRAME_24K: usize = 480;
/// Samples per 20 ms packet at 48 kHz (the Ogg Opus granule clock).
const FRAME_48K: u64 = 960;

/// How to lay out the Ogg Opus stream. The default mirrors OpenAI's newer files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OggLayout {
    /// Ogg stream serial (fixed so output is deterministic).
    pub serial: u32,
    /// The ~790-byte zero-padded OpusTags page (older opus-tools files) instead of ~60 bytes.
    pub padded_tags: bool,
    /// Opus bitrate in bit/s (OpenAI's CELT output runs ~70–80 kbit/s).
    pub bitrate: i32,
    /// Packets per audio page (50 × 20 ms = 1 s pages).
    pub packets_per_page: usize,
}

impl Default for OggLayout {
    fn default() -> Self {
        OggLayout {
            serial: 0x4845_5241,
            padded_tags: false,
            bitrate: 64_000,
            packets_per_page: 50,
        }
    }
}

/// The encoder's real lookahead at 24 kHz, in 48 kHz samples: the pre-skip we write.
/// 312 with libopus's `Audio` application (6.5 ms).
pub fn encoder_pre_skip() -> Result<u16, EmulatorError> {
    let mut enc = new_encoder(64_000)?;
    lookahead_48k(&mut enc)
}

fn new_encoder(bitrate: i32) -> Result<Encoder, EmulatorError> {
    let opus_err = |what: &str, e: opus::Error| EmulatorError::Opus(format!("{what}: {e}"));
    let mut enc = Encoder::new(24_000, Channels::Mono, Application::Audio)
        .map_err(|e| opus_err("creating the encoder", e))?;
    enc.set_bitrate(Bitrate::Bits(bitrate))
        .map_err(|e| opus_err("setting the bitrate", e))?;
    Ok(enc)
}

fn lookahead_48k(enc: &mut Encoder) -> Result<u16, EmulatorError> {
    let la = enc
        .get_lookahead()
        .map_err(|e| EmulatorError::Opus(format!("OPUS_GET_LOOKAHEAD: {e}")))?;
    u16::try_from(la * 2)
        .map_err(|_| EmulatorError::Opus(format!("encoder lookahead {la} does not fit")))
}

fn opus_head(pre_skip: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(19);
    h.extend_from_slice(b"OpusHead");
    h.push(1); // version
    h.push(1); // channels
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&24_000u32.to_le_bytes()); // input sample rate
    h.extend_from_slice(&0i16.to_le_bytes()); // output gain
    h.push(0); // mapping family
    h
}

fn opus_tags(padded: bool) -> Vec<u8> {
    // ffmpeg-style short tags (~60 bytes) or opus-tools style with zero padding (790 bytes).
    let (vendor, comment) = if padded {
        ("libopus 1.3.1", "ENCODER=opusenc from opus-tools 0.2")
    } else {
        ("Lavf61.7.100", "encoder=Lavc61.19.100 libopus")
    };
    let mut t = Vec::with_capacity(790);
    t.extend_from_slice(b"OpusTags");
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor.as_bytes());
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(&(comment.len() as u32).to_le_bytes());
    t.extend_from_slice(comment.as_bytes());
    if padded {
        t.resize(790, 0);
    }
    t
}

/// Encodes 24 kHz mono PCM as Ogg Opus in OpenAI's layout: page 0 OpusHead (pre-skip =
/// encoder lookahead = 312, input rate 24000), page 1 OpusTags, then pages of
/// `packets_per_page` 20 ms packets with a granule on every page; the last page has EOS
/// and granule = pre-skip + 2 × samples (end trim). Same input → same bytes.
pub fn encode_ogg_opus(pcm_24k: &[i16], opts: &OggLayout) -> Result<Vec<u8>, EmulatorError> {
    if opts.packets_per_page == 0 || opts.packets_per_page > 100 {
        return Err(EmulatorError::Invalid(format!(
            "packets_per_page {} is outside 1..=100",
            opts.packets_per_page
        )));
    }
    // Above ~128 kbit/s a 50-packet page could need more than 255 lacing values and the
    // writer would split it, breaking the 1 s page layout.
    if !(6_000..=128_000).contains(&opts.bitrate) {
        return Err(EmulatorError::Invalid(format!(
            "bitrate {} is outside 6000..=128000 bit/s",
            opts.bitrate
        )));
    }
    let mut enc = new_encoder(opts.bitrate)?;
    let pre_skip = lookahead_48k(&mut enc)?;
    let lookahead_24k = pre_skip as usize / 2;
    // Enough packets to push every real sample through the lookahead, and always at least
    // one sample of padding so the final granule is strictly below the packet total.
    let packets = (pcm_24k.len() + lookahead_24k) / FRAME_24K + 1;
    let final_granule = pre_skip as u64 + 2 * pcm_24k.len() as u64;

    let ogg_err = |e: std::io::Error| EmulatorError::Ogg(e.to_string());
    let mut w = PacketWriter::new(Vec::new());
    w.write_packet(
        opus_head(pre_skip),
        opts.serial,
        PacketWriteEndInfo::EndPage,
        0,
    )
    .map_err(ogg_err)?;
    w.write_packet(
        opus_tags(opts.padded_tags),
        opts.serial,
        PacketWriteEndInfo::EndPage,
        0,
    )
    .map_err(ogg_err)?;

    let mut frame = [0i16; FRAME_24K];
    let mut out = [0u8; 1500];
    for p in 0..packets {
        let start = p * FRAME_24K;
        let end = (start + FRAME_24K).min(pcm_24k.len());
        frame.fill(0);
        if start < end {
            frame[..end - start].copy_from_slice(&pcm_24k[start..end]);
        }
        let n = enc
            .encode(&frame, &mut out)
            .map_err(|e| EmulatorError::Opus(format!("encoding packet {p}: {e}")))?;
        let last = p + 1 == packets;
        let (info, granule) = if last {
            (PacketWriteEndInfo::EndStream, final_granule)
        } else if (p + 1) % opts.packets_per_page == 0 {
            (PacketWriteEndInfo::EndPage, (p as u64 + 1) * FRAME_48K)
        } else {
            (PacketWriteEndInfo::NormalPacket, (p as u64 + 1) * FRAME_48K)
        };
        w.write_packet(out[..n].to_vec(), opts.serial, info, granule)
            .map_err(ogg_err)?;
    }
    Ok(w.into_inner())
}

/// Byte ranges of the Ogg pages in `bytes` (stops at the first thing that is not a page).
pub fn page_ranges(bytes: &[u8]) -> Vec<Range<usize>> {
    let mut pages = Vec::new();
    let mut pos = 0;
    while pos + 27 <= bytes.len() && &bytes[pos..pos + 4] == b"OggS" {
        let nseg = bytes[pos + 26] as usize;
        if pos + 27 + nseg > bytes.len() {
            break;
        }
        let body: usize = bytes[pos + 27..pos + 27 + nseg]
            .iter()
            .map(|&b| b as usize)
            .sum();
        let end = pos + 27 + nseg + body;
        if end > bytes.len() {
            break;
        }
        pages.push(pos..end);
        pos = end;
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_skip_is_the_encoders_lookahead_312() {
        assert_eq!(encoder_pre_skip().unwrap(), 312);
    }

    #[test]
    fn tags_sizes_match_what_openai_sends() {
        let short = opus_tags(false).len();
        assert!((55..=70).contains(&short), "{short}");
        let padded = opus_tags(true);
        assert_eq!(padded.len(), 790);
        assert!(padded.iter().rev().take(690).all(|&b| b == 0));
    }

    #[test]
    fn page_layout_for_exact_page_boundaries() {
        // 2 s minus lookahead: the padding rule still adds a packet, so a third page exists.
        let pcm = vec![0i16; 2 * 24_000 - 156];
        let bytes = encode_ogg_opus(&pcm, &OggLayout::default()).unwrap();
        let pages = page_ranges(&bytes);
        assert_eq!(pages.len(), 5);
        assert_eq!(pages.last().unwrap().end, bytes.len());
    }
}
