//! Ogg Opus decoding against a reference libopus decode of the same packets.
//!
//! Streams are built here with the real libopus encoder (`opus` crate) and the `ogg` crate's
//! writer, in OpenAI's layout (mono, 24 kHz input, 1 s pages, trimmed EOS page) and in odd
//! layouts; the decoder under test reads them through our streaming demuxer. The reference is
//! a plain `opus::Decoder` over the same packets with pre-skip and end trim applied here.

use std::io::Cursor;

use herald::codec::ogg::Packet;
use herald::codec::opus::{OggOpusDecoder, OpusError, OpusPacketDecoder, OpusStats, OPUS_RATES};
use herald::codec::{CodecError, StreamDecoder};
use ogg::writing::{PacketWriteEndInfo, PacketWriter};

/// One encoded stream: packets and their durations (48 kHz samples).
struct Encoded {
    channels: u8,
    pre_skip: u16,
    packets: Vec<Vec<u8>>,
    durations: Vec<u64>,
    /// Granule position of the last sample (pre-skip + signal length), below the packet total.
    final_granule: u64,
}

/// How to lay the packets out in Ogg pages.
struct Layout {
    head: Vec<u8>,
    tags: Vec<u8>,
    packets_per_page: usize,
    /// Added to every audio granule (an RFC 7845 §4.3 start offset).
    granule_offset: u64,
}

/// Voice-like test signal: a gliding harmonic tone with a syllable-rate envelope.
fn signal(rate: u32, channels: u8, seconds: f64) -> Vec<i16> {
    let n = (rate as f64 * seconds) as usize;
    let mut out = Vec::with_capacity(n * channels as usize);
    let mut phase = 0.0f64;
    for i in 0..n {
        let t = i as f64 / rate as f64;
        let f0 = 140.0 + 40.0 * (t * 1.3).sin();
        phase += 2.0 * std::f64::consts::PI * f0 / rate as f64;
        let env = 0.5 + 0.5 * (t * 2.0 * std::f64::consts::PI * 3.0).sin().abs();
        let v = (1..=6)
            .map(|h| (phase * h as f64).sin() / h as f64)
            .sum::<f64>();
        for c in 0..channels {
            let pan = if c == 0 { 1.0 } else { 0.6 };
            out.push((v * env * pan * 5000.0) as i16);
        }
    }
    out
}

/// Encodes `seconds` of the test signal with libopus, cycling through `frame_ms` sizes.
fn encode(channels: u8, rate: u32, seconds: f64, frame_ms: &[f64], bitrate: i32) -> Encoded {
    let ch = if channels == 2 {
        opus::Channels::Stereo
    } else {
        opus::Channels::Mono
    };
    let mut enc = opus::Encoder::new(rate, ch, opus::Application::Audio).unwrap();
    enc.set_bitrate(opus::Bitrate::Bits(bitrate)).unwrap();
    let lookahead = enc.get_lookahead().unwrap() as u64;
    let k = 48000 / rate as u64;
    let pre_skip = (lookahead * k) as u16;
    let mut pcm = signal(rate, channels, seconds);
    let len48 = (pcm.len() / channels as usize) as u64 * k;
    // Pad with silence so the encoder's lookahead flushes the real signal out.
    pcm.extend(std::iter::repeat_n(
        0,
        (lookahead as usize + rate as usize / 10) * channels as usize,
    ));
    let (mut packets, mut durations) = (Vec::new(), Vec::new());
    let mut at = 0;
    let mut total = 0;
    for ms in frame_ms.iter().cycle() {
        let frame = (rate as f64 * ms / 1000.0) as usize;
        let end = at + frame * channels as usize;
        if total >= u64::from(pre_skip) + len48 || end > pcm.len() {
            break;
        }
        packets.push(enc.encode_vec(&pcm[at..end], 4000).unwrap());
        durations.push(frame as u64 * k);
        total += frame as u64 * k;
        at = end;
    }
    assert!(
        total > u64::from(pre_skip) + len48,
        "end trimming must be exercised"
    );
    Encoded {
        channels,
        pre_skip,
        packets,
        durations,
        final_granule: u64::from(pre_skip) + len48,
    }
}

fn head(version: u8, channels: u8, pre_skip: u16, gain: i16, family: u8, table: &[u8]) -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.extend_from_slice(&[version, channels]);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&24000u32.to_le_bytes());
    h.extend_from_slice(&gain.to_le_bytes());
    h.push(family);
    h.extend_from_slice(table);
    h
}

/// An OpusTags packet of `total` bytes: vendor string, no comments, then zero padding.
fn tags(total: usize) -> Vec<u8> {
    let vendor = b"Lavf61.7.100";
    let mut t = b"OpusTags".to_vec();
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor);
    t.extend_from_slice(&0u32.to_le_bytes());
    assert!(total >= t.len());
    t.resize(total, 0);
    t
}

fn openai_layout(e: &Encoded) -> Layout {
    Layout {
        head: head(1, e.channels, e.pre_skip, 0, 0, &[]),
        tags: tags(60),
        packets_per_page: 50,
        granule_offset: 0,
    }
}

/// Writes the stream as Ogg pages: head page, tags page(s), audio pages, trimmed EOS page.
fn mux(e: &Encoded, l: &Layout) -> Vec<u8> {
    let serial = 0x5eed;
    let mut w = PacketWriter::new(Vec::new());
    w.write_packet(l.head.clone(), serial, PacketWriteEndInfo::EndPage, 0)
        .unwrap();
    w.write_packet(l.tags.clone(), serial, PacketWriteEndInfo::EndPage, 0)
        .unwrap();
    let mut granule = l.granule_offset;
    for (i, p) in e.packets.iter().enumerate() {
        granule += e.durations[i];
        let last = i + 1 == e.packets.len();
        let (info, gp) = if last {
            (
                PacketWriteEndInfo::EndStream,
                l.granule_offset + e.final_granule,
            )
        } else if (i + 1) % l.packets_per_page == 0 {
            (PacketWriteEndInfo::EndPage, granule)
        } else {
            (PacketWriteEndInfo::NormalPacket, granule)
        };
        w.write_packet(p.clone(), serial, info, gp).unwrap();
    }
    w.into_inner()
}

/// Plain libopus decode of every packet (empty packets concealed like a player would).
fn reference_full(e: &Encoded, rate: u32) -> Vec<i16> {
    let ch = if e.channels == 2 {
        opus::Channels::Stereo
    } else {
        opus::Channels::Mono
    };
    let c = e.channels as usize;
    let k = 48000 / rate as u64;
    let mut dec = opus::Decoder::new(rate, ch).unwrap();
    let mut buf = vec![0i16; 5760 * 2];
    let mut out = Vec::new();
    for (p, &d) in e.packets.iter().zip(&e.durations) {
        let want = if p.is_empty() {
            (d / k) as usize * c
        } else {
            buf.len()
        };
        let n = dec.decode(p, &mut buf[..want], false).unwrap();
        out.extend_from_slice(&buf[..n * c]);
    }
    out
}

/// Expected length rule: a 48 kHz count x is `(x + k/2) / k` frames at the output rate.
fn frames_at(x48: u64, rate: u32) -> u64 {
    let k = 48000 / rate as u64;
    (x48 + k / 2) / k
}

/// The reference with pre-skip dropped and the end trimmed to the final granule.
fn reference(e: &Encoded, rate: u32) -> Vec<i16> {
    let c = e.channels as usize;
    let full = reference_full(e, rate);
    let skip = frames_at(u64::from(e.pre_skip), rate) as usize;
    let len = frames_at(e.final_granule - u64::from(e.pre_skip), rate) as usize;
    full[skip * c..(skip + len) * c].to_vec()
}

/// Feeds `bytes` through OggOpusDecoder in chunks of varying size (1..=max_chunk bytes).
fn decode_chunked(
    bytes: &[u8],
    rate: u32,
    max_chunk: usize,
) -> (Vec<i16>, OpusStats, Result<(), CodecError>) {
    let mut d = OggOpusDecoder::new(rate).unwrap();
    let mut out = Vec::new();
    let mut seed = 0x9e3779b9u32;
    let mut rest = bytes;
    while !rest.is_empty() {
        seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
        let n = (1 + (seed >> 8) as usize % max_chunk).min(rest.len());
        if let Err(e) = d.push(&rest[..n], &mut out) {
            return (out, d.stats(), Err(e));
        }
        rest = &rest[n..];
    }
    let r = d.finish(&mut out);
    (out, d.stats(), r)
}

fn decode_ok(bytes: &[u8], rate: u32) -> (Vec<i16>, OpusStats) {
    let (out, stats, r) = decode_chunked(bytes, rate, 997);
    r.unwrap();
    (out, stats)
}

#[test]
fn openai_layout_matches_reference_at_every_rate_with_exact_length() {
    // 2.3701 s: the playable length is not a multiple of 3, 4 or 6, so rounding is exercised.
    let e = encode(1, 24000, 2.3701, &[20.0], 32000);
    assert_eq!(e.pre_skip, 312, "libopus at 24 kHz has OpenAI's pre-skip");
    let bytes = mux(&e, &openai_layout(&e));
    for rate in OPUS_RATES {
        let (out, stats) = decode_ok(&bytes, rate);
        let want_len = frames_at(e.final_granule - u64::from(e.pre_skip), rate);
        assert_eq!(out.len() as u64, want_len, "length at {rate} Hz");
        assert_eq!(out, reference(&e, rate), "samples at {rate} Hz");
        assert_eq!(stats.output_frames, want_len);
        assert!(stats.trimmed_frames > 0, "end trim at {rate} Hz");
        assert_eq!(
            stats.preskipped_frames,
            frames_at(u64::from(e.pre_skip), rate)
        );
        assert_eq!(stats.concealed_frames, 0);
        assert_eq!(stats.packets, e.packets.len() as u64);
    }
}

#[test]
fn output_does_not_depend_on_chunking() {
    let e = encode(1, 24000, 1.5, &[20.0], 32000);
    let bytes = mux(&e, &openai_layout(&e));
    let (whole, _, r) = decode_chunked(&bytes, 48000, bytes.len());
    r.unwrap();
    for max_chunk in [1, 7, 300] {
        let (out, _, r) = decode_chunked(&bytes, 48000, max_chunk);
        r.unwrap();
        assert_eq!(out, whole, "chunks of up to {max_chunk} bytes");
    }
}

#[test]
fn format_is_known_once_the_head_is_parsed() {
    let e = encode(2, 48000, 0.5, &[20.0], 64000);
    let bytes = mux(&e, &openai_layout(&e));
    let mut d = OggOpusDecoder::new(16000).unwrap();
    assert_eq!(d.format(), None);
    let mut out = Vec::new();
    d.push(&bytes[..60], &mut out).unwrap();
    let f = d.format().expect("OpusHead page is complete");
    assert_eq!((f.rate, f.channels), (16000, 2));
    assert_eq!(d.head().unwrap().pre_skip, e.pre_skip);
}

#[test]
fn padded_790_byte_tags_are_skipped() {
    let e = encode(1, 24000, 1.2, &[20.0], 32000);
    let mut layout = openai_layout(&e);
    layout.tags = tags(790);
    let bytes = mux(&e, &layout);
    let (out, _) = decode_ok(&bytes, 24000);
    assert_eq!(out, reference(&e, 24000));
}

#[test]
fn stereo_odd_layout_with_spanning_tags_and_packets_matches_reference() {
    // Mixed 2.5–60 ms frames at a high bitrate so packets span pages; a 70 kB tags packet
    // spans two pages; pages cut only where 255 lacing values overflow; family 1 with the natural stereo table.
    let e = encode(
        2,
        48000,
        2.50003,
        &[60.0, 10.0, 20.0, 40.0, 2.5, 5.0],
        256000,
    );
    let layout = Layout {
        head: head(1, 2, e.pre_skip, 0, 1, &[1, 1, 0, 1]),
        tags: tags(70_000),
        packets_per_page: 1000,
        granule_offset: 0,
    };
    let bytes = mux(&e, &layout);
    let continued = pages(&bytes).iter().filter(|p| p[5] & 1 == 1).count();
    assert!(
        continued >= 2,
        "tags and an audio packet continue across pages"
    );
    assert_eq!(pages(&bytes)[2][5] & 1, 1, "the tags packet spans pages");
    for rate in [48000, 16000] {
        let (out, stats) = decode_ok(&bytes, rate);
        assert_eq!(
            out.len() as u64,
            2 * frames_at(e.final_granule - u64::from(e.pre_skip), rate)
        );
        assert_eq!(out, reference(&e, rate), "samples at {rate} Hz");
        assert_eq!(stats.concealed_frames, 0, "spanning packets are not losses");
    }
}

#[test]
fn output_gain_is_applied() {
    let e = encode(1, 24000, 1.0, &[20.0], 32000);
    let plain = reference(&e, 48000);
    for (gain_db, factor) in [
        (6.0f64, 10f64.powf(6.0 / 20.0)),
        (-6.0, 10f64.powf(-6.0 / 20.0)),
    ] {
        let mut layout = openai_layout(&e);
        let q78 = (gain_db * 256.0) as i16;
        layout.head = head(1, 1, e.pre_skip, q78, 0, &[]);
        let (out, _) = decode_ok(&mux(&e, &layout), 48000);
        assert_eq!(out.len(), plain.len());
        let peak = plain.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak > 2000, "signal is audible");
        for (i, (&o, &p)) in out.iter().zip(&plain).enumerate() {
            let want = p as f64 * factor;
            assert!(
                (o as f64 - want).abs() <= 2.0 + want.abs() * 0.002,
                "{gain_db} dB at {i}: got {o}, plain {p}"
            );
        }
    }
}

/// Splits an Ogg byte stream into its pages.
fn pages(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        assert_eq!(&bytes[at..at + 4], b"OggS");
        let nseg = bytes[at + 26] as usize;
        let body: usize = bytes[at + 27..at + 27 + nseg]
            .iter()
            .map(|&l| l as usize)
            .sum();
        let len = 27 + nseg + body;
        out.push(&bytes[at..at + len]);
        at += len;
    }
    out
}

fn granule(page: &[u8]) -> u64 {
    u64::from_le_bytes(page[6..14].try_into().unwrap())
}

#[test]
fn lost_page_is_concealed_and_length_stays_exact() {
    let e = encode(1, 24000, 4.3, &[20.0], 32000);
    let bytes = mux(&e, &openai_layout(&e));
    let all = pages(&bytes);
    assert!(all.len() >= 6);
    // Lose the first audio page (index 2) or one in the middle (index 4).
    for lost in [2, 4] {
        let prev = if lost == 2 { 0 } else { granule(all[lost - 1]) };
        let missing = granule(all[lost]) - prev;
        let damaged: Vec<u8> = all
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != lost)
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        for rate in [48000, 24000, 16000] {
            let (out, stats) = decode_ok(&damaged, rate);
            let want_len = frames_at(e.final_granule - u64::from(e.pre_skip), rate);
            assert_eq!(out.len() as u64, want_len, "page {lost} lost, {rate} Hz");
            assert_eq!(stats.concealed_frames, frames_at(missing, rate));
            assert_eq!(stats.concealments, 1);
            // Everything before the loss is decoded exactly as without it.
            let skip = frames_at(u64::from(e.pre_skip), rate);
            let before = frames_at(prev, rate).saturating_sub(skip) as usize;
            assert_eq!(out[..before], reference(&e, rate)[..before]);
        }
    }
}

/// A stereo stream whose pages are cut only where 255 lacing values overflow (so packets
/// continue across pages), with a middle page lost whose last packet continues on the next,
/// non-final page. Returns the stream, its intact pages, the lost index and the damaged bytes.
fn spanning_loss() -> (Encoded, Vec<Vec<u8>>, usize, Vec<u8>) {
    let e = encode(2, 48000, 8.00003, &[60.0], 256000);
    let layout = Layout {
        head: head(1, 2, e.pre_skip, 0, 0, &[]),
        tags: tags(60),
        packets_per_page: 100_000,
        granule_offset: 0,
    };
    let bytes = mux(&e, &layout);
    let all: Vec<Vec<u8>> = pages(&bytes).into_iter().map(<[u8]>::to_vec).collect();
    let lost = (3..all.len() - 2)
        .find(|&i| all[i + 1][5] & 1 == 1)
        .expect("a middle page whose last packet continues");
    let damaged = all
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != lost)
        .flat_map(|(_, p)| p.iter().copied())
        .collect();
    (e, all, lost, damaged)
}

#[test]
fn lost_page_with_a_packet_spanning_out_of_it_is_concealed() {
    let (e, all, lost, damaged) = spanning_loss();
    let span = granule(&all[lost]) - granule(&all[lost - 1]);
    let (out, stats) = decode_ok(&damaged, 48000);
    let want_len = e.final_granule - u64::from(e.pre_skip);
    assert_eq!(out.len() as u64, 2 * want_len, "length stays exact");
    // With a demuxer that drops the packet cut by the loss this is `span` plus that packet's
    // duration (see `demuxer_never_glues_packets_across_a_lost_page`).
    assert!(stats.concealed_frames >= span, "the lost page is concealed");
    assert_eq!(stats.concealments, 1);
    let before = (granule(&all[lost - 1]) - u64::from(e.pre_skip)) as usize * 2;
    assert_eq!(out[..before], reference(&e, 48000)[..before]);
}

#[test]
fn demuxer_never_glues_packets_across_a_lost_page() {
    // Every packet the demuxer hands the Opus decoder must be one the encoder made; a glued
    // packet decodes as 60 ms of garbage audio instead of being concealed.
    let (e, _, _, damaged) = spanning_loss();
    let mut demuxer = herald::codec::ogg::Demuxer::new();
    let mut foreign = Vec::new();
    demuxer
        .push(&damaged, &mut |p| {
            if p.page_sequence > 1 && !e.packets.contains(&p.data) {
                foreign.push((p.page_sequence, p.data.len()));
            }
        })
        .unwrap();
    assert_eq!(
        foreign,
        [],
        "packets that the encoder never made (page, length)"
    );
}

#[test]
fn empty_packet_is_concealed_as_one_frame() {
    let mut e = encode(1, 24000, 1.5, &[20.0], 32000);
    // A zero-byte packet in the middle stands for one lost 20 ms frame (RFC 7845 §5).
    e.packets.insert(30, Vec::new());
    e.durations.insert(30, 960);
    e.final_granule += 960;
    let bytes = mux(&e, &openai_layout(&e));
    for rate in [48000, 8000] {
        let (out, stats) = decode_ok(&bytes, rate);
        assert_eq!(out, reference(&e, rate), "{rate} Hz");
        assert_eq!(stats.concealed_frames, 960 / (48000 / rate as u64));
    }
}

#[test]
fn start_offset_does_not_add_silence_or_change_length() {
    let e = encode(1, 24000, 1.5, &[20.0], 32000);
    let plain = decode_ok(&mux(&e, &openai_layout(&e)), 24000).0;
    let mut layout = openai_layout(&e);
    layout.granule_offset = 48000 * 7;
    let (out, stats) = decode_ok(&mux(&e, &layout), 24000);
    assert_eq!(stats.start_offset_48k, 48000 * 7);
    assert_eq!(out, plain);
}

#[test]
fn packet_decoder_over_ogg_crate_packets_matches_reference() {
    // Test adapter: the `ogg` crate's PacketReader stands in for our demuxer here, to check
    // the packet-level API on its own. Page sequence numbers are counted from packets that
    // start a page (exact for this layout, where no packet spans pages).
    let e = encode(1, 24000, 2.1, &[20.0], 32000);
    let bytes = mux(&e, &openai_layout(&e));
    let mut reader = ogg::reading::PacketReader::new(Cursor::new(bytes));
    let mut d = OpusPacketDecoder::new(48000).unwrap();
    let mut out = Vec::new();
    let mut page = 0u32;
    let mut first = true;
    while let Some(p) = reader.read_packet().unwrap() {
        if p.first_in_page() && !first {
            page += 1;
        }
        first = false;
        let packet = Packet {
            bos: p.first_in_stream(),
            eos: p.last_in_stream(),
            last_on_page: p.last_in_page(),
            page_granule: p.absgp_page(),
            page_sequence: page,
            serial: p.stream_serial(),
            data: p.data,
        };
        d.packet(&packet, &mut out).unwrap();
    }
    d.finish(&mut out).unwrap();
    assert_eq!(out, reference(&e, 48000));
    assert_eq!(d.head().unwrap().channels, 1);
}

#[test]
fn other_logical_streams_are_ignored() {
    let e = encode(1, 24000, 1.0, &[20.0], 32000);
    let ours = mux(&e, &openai_layout(&e));
    // A second, unrelated stream's pages interleaved after our header pages.
    let mut w = PacketWriter::new(Vec::new());
    w.write_packet(
        b"OpusHead-other".to_vec(),
        77,
        PacketWriteEndInfo::EndPage,
        0,
    )
    .unwrap();
    w.write_packet(vec![1u8; 100], 77, PacketWriteEndInfo::EndStream, 0)
        .unwrap();
    let other = w.into_inner();
    let p = pages(&ours);
    let mut mixed = Vec::new();
    mixed.extend_from_slice(p[0]);
    mixed.extend_from_slice(p[1]);
    mixed.extend_from_slice(&other);
    for page in &p[2..] {
        mixed.extend_from_slice(page);
    }
    let (out, stats) = decode_ok(&mixed, 24000);
    assert_eq!(out, reference(&e, 24000));
    assert_eq!(stats.ignored_packets, 2);
}

/// Decodes a stream whose header packets are replaced, expecting an error.
fn header_error(head_pkt: Vec<u8>, tags_pkt: Vec<u8>) -> OpusError {
    let e = encode(1, 24000, 0.3, &[20.0], 32000);
    let layout = Layout {
        head: head_pkt,
        tags: tags_pkt,
        packets_per_page: 50,
        granule_offset: 0,
    };
    match decode_chunked(&mux(&e, &layout), 48000, 4096).2 {
        Err(CodecError::Opus(e)) => e,
        other => panic!("expected an Opus error, got {other:?}"),
    }
}

#[test]
fn bad_headers_give_specific_errors() {
    let ok_tags = tags(60);
    let e = header_error(b"OggVorbis-not-opus".to_vec(), ok_tags.clone());
    assert!(matches!(e, OpusError::NotOpus { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("not an Opus stream: first packet starts with \"OggVorbi\""),
        "{e}"
    );

    let e = header_error(b"OpusHead\x01\x01".to_vec(), ok_tags.clone());
    assert!(
        matches!(
            e,
            OpusError::HeadTooShort {
                len: 10,
                need: 19,
                ..
            }
        ),
        "{e}"
    );

    for v in [0, 2, 15, 16, 255] {
        let e = header_error(head(v, 1, 312, 0, 0, &[]), ok_tags.clone());
        assert!(
            matches!(e, OpusError::UnsupportedVersion { version } if version == v),
            "{e}"
        );
        assert!(e.to_string().contains("only version 1"), "{e}");
    }
    for c in [0, 3, 8] {
        let e = header_error(head(1, c, 312, 0, 0, &[]), ok_tags.clone());
        assert!(
            matches!(e, OpusError::UnsupportedChannels { channels } if channels == c),
            "{e}"
        );
        assert!(
            e.to_string().contains("allowed are 1 (mono) or 2 (stereo)"),
            "{e}"
        );
    }
    for f in [2, 255] {
        let e = header_error(head(1, 1, 312, 0, f, &[]), ok_tags.clone());
        assert!(
            matches!(e, OpusError::UnsupportedMappingFamily { family } if family == f),
            "{e}"
        );
    }
    // Family 1: a table that needs two streams, and one with swapped channels.
    for table in [[2u8, 0, 0, 1], [1, 1, 1, 0]] {
        let e = header_error(head(1, 2, 312, 0, 1, &table), ok_tags.clone());
        assert!(
            matches!(e, OpusError::UnsupportedMappingTable { .. }),
            "{e}"
        );
    }
    let e = header_error(head(1, 2, 312, 0, 1, &[1]), ok_tags.clone());
    assert!(matches!(e, OpusError::HeadTooShort { need: 23, .. }), "{e}");

    let e = header_error(head(1, 1, 312, 0, 0, &[]), b"OpusTagz-wrong".to_vec());
    assert!(matches!(e, OpusError::NotTags { page: 1, .. }), "{e}");
}

#[test]
fn corrupt_packet_names_its_index_and_page() {
    let mut e = encode(1, 24000, 1.5, &[20.0], 32000);
    // TOC code 3 without its frame-count byte: libopus reports an invalid packet.
    e.packets[55] = vec![0x03 | 0xf8];
    let bytes = mux(&e, &openai_layout(&e));
    match decode_chunked(&bytes, 48000, 4096).2 {
        Err(CodecError::Opus(OpusError::Corrupt { index, page, .. })) => {
            assert_eq!(index, 2 + 55, "packet index counts the two header packets");
            assert_eq!(page, 3, "packet 55 is on the second audio page");
        }
        other => panic!("expected a corrupt-packet error, got {other:?}"),
    }
}

#[test]
fn truncated_stream_and_bad_rate_are_reported() {
    let e = encode(1, 24000, 2.5, &[20.0], 32000);
    let bytes = mux(&e, &openai_layout(&e));
    let p = pages(&bytes);
    // Cut after a whole page: the demuxer is happy, but the Opus stream has no EOS page.
    let cut: usize = p[..4].iter().map(|p| p.len()).sum();
    let (out, _, r) = decode_chunked(&bytes[..cut], 48000, 512);
    assert!(!out.is_empty(), "audio before the cut is still delivered");
    match r {
        Err(CodecError::Opus(OpusError::Truncated { packets, .. })) => assert_eq!(packets, 100),
        other => panic!("expected Truncated, got {other:?}"),
    }
    let msg = OggOpusDecoder::new(44100).err().unwrap().to_string();
    assert!(
        msg.contains("44100 Hz") && msg.contains("8000, 12000, 16000, 24000"),
        "{msg}"
    );
}

/// Pre-skip and the final granule of a file, read with the `ogg` crate (not our demuxer).
fn file_facts(bytes: &[u8]) -> (u16, u64, Vec<Vec<u8>>) {
    let mut reader = ogg::reading::PacketReader::new(Cursor::new(bytes.to_vec()));
    let mut packets = Vec::new();
    let mut last_granule = 0;
    while let Some(p) = reader.read_packet().unwrap() {
        last_granule = p.absgp_page();
        packets.push(p.data);
    }
    let pre_skip = u16::from_le_bytes([packets[0][10], packets[0][11]]);
    (pre_skip, last_granule, packets.split_off(2))
}

#[test]
fn opusenc_fixture_decodes_with_exact_length() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hello-opusenc.opus"
    );
    let bytes = std::fs::read(path).unwrap();
    let (pre_skip, final_granule, packets) = file_facts(&bytes);
    let e = Encoded {
        channels: 1,
        pre_skip,
        durations: packets
            .iter()
            .map(|p| opus::packet::get_nb_samples(p, 48000).unwrap() as u64)
            .collect(),
        packets,
        final_granule,
    };
    for rate in [48000, 24000, 16000] {
        let (out, stats) = decode_ok(&bytes, rate);
        assert_eq!(
            out.len() as u64,
            frames_at(final_granule - u64::from(pre_skip), rate)
        );
        assert_eq!(out, reference(&e, rate), "{rate} Hz");
        assert!(stats.trimmed_frames > 0);
    }
}

#[test]
fn audio_starts_with_the_first_packet_not_the_first_page() {
    // OpenAI sends 1 s pages: waiting for a whole page would delay the first sound by 1 s.
    let e = encode(1, 24000, 2.0, &[20.0], 32000);
    let bytes = mux(&e, &openai_layout(&e));
    let p = pages(&bytes);
    let audio_start = p[0].len() + p[1].len();
    let nseg = p[2][26] as usize;
    let first_packet_end = audio_start + 27 + nseg + e.packets[0].len();
    let mut d = OggOpusDecoder::new(48000).unwrap();
    let mut out = Vec::new();
    d.push(&bytes[..first_packet_end], &mut out).unwrap();
    assert_eq!(
        out.len(),
        960 - usize::from(e.pre_skip),
        "first packet minus pre-skip"
    );
    assert_eq!(out, reference(&e, 48000)[..out.len()]);
}

/// OpenAI-layout packets made by hand (no Ogg framing), for the packet-level decoder.
fn packets_of(e: &Encoded, per_page: usize, first_granule_adjust: i64) -> Vec<Packet> {
    let mk = |data: Vec<u8>, seq, granule, last, eos| Packet {
        data,
        serial: 1,
        page_sequence: seq,
        page_granule: granule,
        last_on_page: last,
        bos: seq == 0,
        eos,
    };
    let mut out = vec![
        mk(
            head(1, e.channels, e.pre_skip, 0, 0, &[]),
            0,
            0,
            true,
            false,
        ),
        mk(tags(60), 1, 0, true, false),
    ];
    let n = e.packets.len();
    for (page, chunk) in e.packets.chunks(per_page).enumerate() {
        let end = ((page + 1) * per_page).min(n);
        let eos = end == n;
        let mut granule = if eos {
            e.final_granule
        } else {
            e.durations[..end].iter().sum()
        };
        if page == 0 {
            granule = (granule as i64 + first_granule_adjust) as u64;
        }
        for (i, data) in chunk.iter().enumerate() {
            let last = i + 1 == chunk.len();
            out.push(mk(data.clone(), 2 + page as u32, granule, last, eos));
        }
    }
    out
}

fn decode_packets(packets: &[Packet], rate: u32) -> (Vec<i16>, Result<(), OpusError>) {
    let mut d = OpusPacketDecoder::new(rate).unwrap();
    let mut out = Vec::new();
    for p in packets {
        if let Err(e) = d.packet(p, &mut out) {
            return (out, Err(e));
        }
    }
    let r = d.finish(&mut out);
    (out, r)
}

#[test]
fn single_page_stream_is_trimmed_exactly() {
    // A short announcement fits in one page that is both the first audio page and the EOS.
    let e = encode(1, 24000, 0.4321, &[20.0], 32000);
    for rate in [48000, 12000] {
        let (out, r) = decode_packets(&packets_of(&e, 1000, 0), rate);
        r.unwrap();
        assert_eq!(
            out.len() as u64,
            frames_at(e.final_granule - u64::from(e.pre_skip), rate)
        );
        assert_eq!(out, reference(&e, rate));
    }
}

#[test]
fn first_page_claiming_fewer_samples_than_it_holds_is_rejected() {
    let e = encode(1, 24000, 2.0, &[20.0], 32000);
    let (_, r) = decode_packets(&packets_of(&e, 50, -960), 48000);
    match r {
        Err(OpusError::BadFirstGranule {
            page,
            granule,
            samples,
        }) => {
            assert_eq!((page, granule, samples), (2, 48000 - 960, 48000));
        }
        other => panic!("expected BadFirstGranule, got {other:?}"),
    }
}

#[test]
fn streams_without_audio_headers_are_reported_at_the_end() {
    let e = encode(1, 24000, 0.2, &[20.0], 32000);
    let (_, r) = decode_packets(&[], 48000);
    assert!(matches!(r, Err(OpusError::Truncated { .. })), "{r:?}");
    assert!(r.unwrap_err().to_string().contains("no OpusHead"));
    // OpusHead alone, even on an EOS page, lacks OpusTags.
    let mut only_head = packets_of(&e, 50, 0);
    only_head.truncate(1);
    only_head[0].eos = true;
    let (out, r) = decode_packets(&only_head, 48000);
    assert!(out.is_empty());
    assert!(r.unwrap_err().to_string().contains("before OpusTags"));
}
