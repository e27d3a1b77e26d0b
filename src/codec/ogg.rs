//! Push-based streaming Ogg demuxer (our own code): bytes in any chunking → packets,
//! each emitted as soon as its last byte has arrived.
//!
//! Why our own: the `ogg` crate only hands out packets once a whole page is in, and OpenAI
//! sends ~1 s of audio per page; emitting packets as their bytes arrive lets playback start
//! (and continue) without waiting for page boundaries.
//!
//! How it works: the page header (27 bytes + segment table, at most 282 bytes) is buffered;
//! the body is never buffered as a whole. Body bytes are copied slice-wise into the packet
//! being assembled and fed to a running CRC; the CRC is compared when the page's last byte
//! arrives. Memory is therefore bounded by one page header plus one pending packet
//! (≤ `max_packet_bytes`), whatever the input.
//!
//! Limits (documented behaviour, not bugs):
//! - Packets are emitted before their page's CRC is known. A CRC mismatch is reported when the
//!   page completes, after that page's packets may already have been emitted: callers should
//!   treat [`OggError::Crc`] as fatal for the stream.
//! - One packet is assembled at a time: a packet that continues on a later page must continue
//!   on the next page of the physical stream (true for single-stream and chained files such as
//!   OpenAI's). Interleaved (multiplexed) logical streams still demux, but a packet interrupted
//!   by another stream's page is dropped and counted in [`DemuxStats::dropped_packets`].

use std::fmt;

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

/// Default limit for one packet (Opus packets are at most ~7.7 KB; headers a few KB).
pub const DEFAULT_MAX_PACKET_BYTES: usize = 1 << 20;

/// Fixed page header length (up to and including the segment count).
const FIXED_HEADER: usize = 27;
/// Largest possible page header: fixed part plus 255 lacing values.
const MAX_HEADER: usize = FIXED_HEADER + 255;
/// The capture pattern that starts every page.
const CAPTURE: &[u8; 4] = b"OggS";
/// How many bytes of junk are kept to describe it in an error.
const JUNK_SAMPLE: usize = 64;

const FLAG_CONTINUED: u8 = 0x01;
const FLAG_BOS: u8 = 0x02;
const FLAG_EOS: u8 = 0x04;

/// Errors from the demuxer; each names the page (sequence number and byte offset) where one is
/// known. Byte offsets count from the first byte ever pushed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OggError {
    /// The page's checksum does not match its contents.
    #[error(
        "Ogg page {page_sequence} at byte {offset}: CRC mismatch (stream corrupted in transit; \
         stored {stored:#010x}, computed {computed:#010x})"
    )]
    Crc {
        /// Sequence number written in the page header.
        page_sequence: u32,
        /// Byte offset of the page's first byte in the stream.
        offset: u64,
        /// Checksum stored in the page.
        stored: u32,
        /// Checksum computed over the bytes received.
        computed: u32,
    },
    /// A packet grew beyond the configured limit; it was discarded.
    #[error(
        "Ogg page {page_sequence} at byte {offset}: packet of at least {size} bytes exceeds the \
         limit of {max} bytes; packet discarded"
    )]
    PacketTooLarge {
        /// Sequence number of the page on which the limit was crossed.
        page_sequence: u32,
        /// Byte offset of that page in the stream.
        offset: u64,
        /// Bytes the packet would have had by the end of that page.
        size: usize,
        /// The configured limit (`Demuxer::with_max_packet_bytes`).
        max: usize,
    },
    /// No bytes at all arrived.
    #[error("no data: the Ogg stream was empty")]
    Empty,
    /// Input ended and no Ogg page was ever found in it.
    #[error("not an Ogg stream: no Ogg page found in {bytes} bytes ({looks_like})")]
    NotOgg {
        /// How many bytes arrived.
        bytes: u64,
        /// What the bytes looked like, e.g. "looks like HTML: starts with `<html>`".
        looks_like: String,
    },
    /// Input ended; pages were found but every one failed its CRC check.
    #[error(
        "Ogg stream corrupted: no intact page in {bytes} bytes; {crc_errors} page(s) failed the \
         CRC check"
    )]
    NoIntactPage {
        /// How many bytes arrived.
        bytes: u64,
        /// How many pages failed their CRC check.
        crc_errors: u64,
    },
    /// Input ended in the middle of a page header.
    #[error(
        "Ogg stream truncated: it ended inside a page header at byte {offset} ({have} of at least \
         {FIXED_HEADER} header bytes arrived)"
    )]
    TruncatedHeader {
        /// Byte offset of the incomplete page.
        offset: u64,
        /// Header bytes that arrived.
        have: usize,
    },
    /// Input ended in the middle of a page.
    #[error(
        "Ogg stream truncated: it ended inside page {page_sequence} at byte {offset}, \
         {missing} bytes short of the page's end"
    )]
    TruncatedPage {
        /// Sequence number of the incomplete page.
        page_sequence: u32,
        /// Byte offset of the incomplete page.
        offset: u64,
        /// Bytes that were still expected.
        missing: usize,
    },
    /// Input ended while a packet continued beyond the last page.
    #[error(
        "Ogg stream truncated: its last page ({page_sequence} at byte {offset}) says the packet \
         continues, but no further page arrived ({bytes} bytes of the packet lost)"
    )]
    UnfinishedPacket {
        /// Sequence number of the last page.
        page_sequence: u32,
        /// Byte offset of the last page.
        offset: u64,
        /// Bytes of the unfinished packet that had arrived.
        bytes: usize,
    },
    /// Input ended with bytes that are not an Ogg page after the last good page.
    #[error(
        "Ogg stream ended with {bytes} bytes that are not an Ogg page after page {last_page} \
         ({looks_like})"
    )]
    TrailingJunk {
        /// How many junk bytes followed the last page.
        bytes: u64,
        /// Sequence number of the last good page.
        last_page: u32,
        /// What the junk looked like.
        looks_like: String,
    },
}

/// Counters describing what the demuxer has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemuxStats {
    /// Bytes pushed in total.
    pub bytes: u64,
    /// Pages completed with a good CRC.
    pub pages: u64,
    /// Packets emitted.
    pub packets: u64,
    /// Bytes skipped while searching for a page (junk, rejected headers, the rest of a chunk
    /// after an error).
    pub skipped_bytes: u64,
    /// Pages whose CRC did not match.
    pub crc_errors: u64,
    /// Continued packet fragments dropped because their start was never seen (e.g. after junk).
    pub orphaned_fragments: u64,
    /// Packets dropped unfinished: the next page did not continue them, or they were too large.
    pub dropped_packets: u64,
    /// Times the page sequence number of a stream jumped (pages lost).
    pub sequence_gaps: u64,
    /// An end-of-stream page has completed.
    pub eos_seen: bool,
}

/// Where the parser is inside the page structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Searching for / collecting the capture pattern and the 27-byte fixed header.
    Header,
    /// Collecting the segment table (`nseg` lacing values after the fixed header).
    Segments,
    /// Inside the page body.
    Body,
}

/// Fields of the page currently being parsed.
#[derive(Debug, Clone, Copy, Default)]
struct PageInfo {
    offset: u64,
    flags: u8,
    granule: u64,
    serial: u32,
    sequence: u32,
    stored_crc: u32,
    nseg: usize,
    /// Index of the last lacing value < 255 (the last packet ending on the page).
    last_end_seg: Option<usize>,
    body_len: usize,
}

/// The streaming demuxer: push bytes in any chunking, get packets as soon as they complete.
///
/// Packets spanning pages are reassembled. A page flagged "continued" when no packet is
/// pending (e.g. after resynchronising) starts with an orphan fragment, which is skipped and
/// counted in [`DemuxStats::orphaned_fragments`]; a pending packet followed by a page that
/// does not continue it is dropped and counted in [`DemuxStats::dropped_packets`]. Neither is
/// an error: the stream goes on, and the counters tell what was lost.
///
/// Memory in use is at most one page header (282 bytes) plus the pending packet
/// (≤ `max_packet_bytes`), whatever the input. After `push` returns an error, the rest of
/// that chunk is discarded (counted as skipped) and the next `push` resynchronises on the
/// next "OggS" capture pattern.
pub struct Demuxer {
    max_packet: usize,
    state: State,
    /// Header bytes collected so far (`hdr[..hdr_len]`).
    hdr: [u8; MAX_HEADER],
    hdr_len: usize,
    /// Stream offset of `hdr[0]`.
    hdr_offset: u64,
    page: PageInfo,
    crc: u32,
    /// Next lacing value to start a fragment at.
    seg_idx: usize,
    /// A fragment (run of segments of one packet on this page) is being read.
    frag_active: bool,
    frag_left: usize,
    frag_end_seg: usize,
    frag_ends_packet: bool,
    body_read: usize,
    /// A packet has started and not yet ended.
    in_packet: bool,
    /// The packet in progress is kept (false: an orphan fragment being skipped).
    keep: bool,
    pending: Vec<u8>,
    /// Stream offset of the next byte to be pushed.
    pos: u64,
    stats: DemuxStats,
    /// (serial, sequence) of the last good page, for gap counting and error messages.
    last_page: Option<(u32, u32, u64)>,
    /// Bytes skipped since the last good page (or since the start).
    junk_run: u64,
    junk_head: [u8; JUNK_SAMPLE],
    junk_head_len: usize,
}

impl fmt::Debug for Demuxer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Summarise: the buffers themselves are noise in a log.
        f.debug_struct("Demuxer")
            .field("state", &self.state)
            .field("max_packet", &self.max_packet)
            .field("header_bytes", &self.hdr_len)
            .field("pending_bytes", &self.pending.len())
            .field("in_packet", &self.in_packet)
            .field("pos", &self.pos)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for Demuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl Demuxer {
    /// A demuxer that accepts packets of up to [`DEFAULT_MAX_PACKET_BYTES`].
    pub fn new() -> Self {
        Self::with_max_packet_bytes(DEFAULT_MAX_PACKET_BYTES)
    }

    /// A demuxer that rejects packets longer than `max` bytes (bounding its memory).
    pub fn with_max_packet_bytes(max: usize) -> Self {
        Demuxer {
            max_packet: max,
            state: State::Header,
            hdr: [0; MAX_HEADER],
            hdr_len: 0,
            hdr_offset: 0,
            page: PageInfo::default(),
            crc: 0,
            seg_idx: 0,
            frag_active: false,
            frag_left: 0,
            frag_end_seg: 0,
            frag_ends_packet: false,
            body_read: 0,
            in_packet: false,
            keep: false,
            pending: Vec::new(),
            pos: 0,
            stats: DemuxStats::default(),
            last_page: None,
            junk_run: 0,
            junk_head: [0; JUNK_SAMPLE],
            junk_head_len: 0,
        }
    }

    /// Consumes `bytes`, calling `emit` for every packet whose last byte is among them.
    ///
    /// A packet is emitted inside the call that delivers its last byte, even if the rest of
    /// its page has not arrived; empty packets are emitted too. A page's CRC is checked when
    /// its last byte arrives: on a mismatch this returns [`OggError::Crc`], and packets of that
    /// page may already have been emitted (callers should abort the stream). Junk between
    /// pages is skipped (see [`DemuxStats::skipped_bytes`]) without an error; [`finish`]
    /// reports a stream that never became Ogg. After an error the rest of `bytes` is
    /// discarded and the next call resynchronises on the next capture pattern.
    ///
    /// [`finish`]: Demuxer::finish
    pub fn push(&mut self, bytes: &[u8], emit: &mut dyn FnMut(Packet)) -> Result<(), OggError> {
        self.stats.bytes += bytes.len() as u64;
        let mut rest = bytes;
        let result = self.run(&mut rest, emit);
        if result.is_err() {
            self.skip_after_error(rest);
        }
        result
    }

    /// Signals end of input; call once after the last `push`.
    ///
    /// Errors if the input ended inside a page, inside a packet that a page said continues,
    /// with junk after the last page, or without any Ogg page at all (the error then says
    /// what the bytes looked like, e.g. HTML or JSON).
    pub fn finish(&mut self) -> Result<(), OggError> {
        match self.state {
            State::Header if self.hdr_len >= CAPTURE.len() => {
                return Err(OggError::TruncatedHeader {
                    offset: self.hdr_offset,
                    have: self.hdr_len,
                });
            }
            State::Header => {
                // A partial capture pattern at the very end is junk, not a page.
                self.skip(&CAPTURE[..self.hdr_len]);
                self.hdr_len = 0;
            }
            State::Segments | State::Body => {
                let page_len = FIXED_HEADER + self.page.nseg + self.page.body_len;
                let have = if self.state == State::Segments {
                    self.hdr_len
                } else {
                    FIXED_HEADER + self.page.nseg + self.body_read
                };
                return Err(OggError::TruncatedPage {
                    page_sequence: self.page.sequence,
                    offset: self.page.offset,
                    missing: page_len - have,
                });
            }
        }
        match self.last_page {
            None if self.stats.bytes == 0 => Err(OggError::Empty),
            None if self.stats.crc_errors > 0 => Err(OggError::NoIntactPage {
                bytes: self.stats.bytes,
                crc_errors: self.stats.crc_errors,
            }),
            None => Err(OggError::NotOgg {
                bytes: self.stats.bytes,
                looks_like: describe(&self.junk_head[..self.junk_head_len]),
            }),
            Some((_, seq, _)) if self.junk_run > 0 => Err(OggError::TrailingJunk {
                bytes: self.junk_run,
                last_page: seq,
                looks_like: describe(&self.junk_head[..self.junk_head_len]),
            }),
            Some((_, seq, offset)) if self.in_packet && self.keep => {
                Err(OggError::UnfinishedPacket {
                    page_sequence: seq,
                    offset,
                    bytes: self.pending.len(),
                })
            }
            Some(_) => Ok(()),
        }
    }

    /// Counters of pages, packets, skipped bytes, CRC errors and dropped data so far.
    pub fn stats(&self) -> DemuxStats {
        self.stats
    }

    /// Bytes held internally: the incomplete page header plus the pending packet's allocation.
    pub fn buffered_bytes(&self) -> usize {
        self.hdr_len + self.pending.capacity()
    }

    /// Drives the state machine until `input` is used up (or an error).
    fn run(&mut self, input: &mut &[u8], emit: &mut dyn FnMut(Packet)) -> Result<(), OggError> {
        loop {
            match self.state {
                State::Header => {
                    if input.is_empty() {
                        return Ok(());
                    }
                    let used = self.take_header(input);
                    self.advance(input, used);
                }
                State::Segments => {
                    let need = FIXED_HEADER + self.page.nseg - self.hdr_len;
                    let n = need.min(input.len());
                    self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&input[..n]);
                    self.hdr_len += n;
                    self.advance(input, n);
                    if n < need {
                        return Ok(());
                    }
                    self.begin_body();
                }
                State::Body => {
                    let used = self.take_body(input, emit);
                    let used = match used {
                        Ok(n) => n,
                        Err((n, e)) => {
                            self.advance(input, n);
                            return Err(e);
                        }
                    };
                    self.advance(input, used);
                    if self.state == State::Body {
                        // Only stops in the body when the input is used up.
                        return Ok(());
                    }
                }
            }
        }
    }

    fn advance(&mut self, input: &mut &[u8], n: usize) {
        *input = &input[n..];
        self.pos += n as u64;
    }

    /// Capture search and fixed header; returns the bytes consumed from `input`.
    fn take_header(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while used < input.len() {
            if self.hdr_len == 0 {
                // Fast path: skip everything up to the next 'O'.
                let rest = &input[used..];
                match rest.iter().position(|&b| b == CAPTURE[0]) {
                    Some(i) => {
                        self.skip(&rest[..i]);
                        used += i;
                        self.hdr[0] = CAPTURE[0];
                        self.hdr_len = 1;
                        self.hdr_offset = self.pos + used as u64;
                        used += 1;
                    }
                    None => {
                        self.skip(rest);
                        return input.len();
                    }
                }
            } else if self.hdr_len < CAPTURE.len() {
                let b = input[used];
                if b == CAPTURE[self.hdr_len] {
                    self.hdr[self.hdr_len] = b;
                    self.hdr_len += 1;
                    used += 1;
                } else {
                    // "OggS" does not overlap itself, so the partial match is junk and only the
                    // current byte can start a new match: re-examine it.
                    self.skip(&CAPTURE[..self.hdr_len]);
                    self.hdr_len = 0;
                }
            } else {
                let n = (FIXED_HEADER - self.hdr_len).min(input.len() - used);
                self.hdr[self.hdr_len..self.hdr_len + n].copy_from_slice(&input[used..used + n]);
                self.hdr_len += n;
                used += n;
                if self.hdr_len == FIXED_HEADER {
                    if self.header_is_plausible() {
                        self.begin_segments();
                        return used;
                    }
                    self.rescan_header();
                }
            }
        }
        used
    }

    /// Version 0 and a possible combination of flags; anything else is a false capture.
    fn header_is_plausible(&self) -> bool {
        let flags = self.hdr[5];
        self.hdr[4] == 0
            && flags & !(FLAG_CONTINUED | FLAG_BOS | FLAG_EOS) == 0
            // The first page of a stream cannot continue a packet.
            && !(flags & FLAG_BOS != 0 && flags & FLAG_CONTINUED != 0)
    }

    /// A rejected fixed header may hide the real capture pattern: search its bytes after the
    /// first one, keep from there, and count what lies before as junk.
    fn rescan_header(&mut self) {
        let buf = self.hdr;
        let held = &buf[..self.hdr_len];
        let keep_from = (1..held.len())
            .find(|&i| {
                let tail = &held[i..];
                let n = tail.len().min(CAPTURE.len());
                tail[..n] == CAPTURE[..n]
            })
            .unwrap_or(held.len());
        self.skip(&held[..keep_from]);
        let kept = held.len() - keep_from;
        self.hdr[..kept].copy_from_slice(&held[keep_from..]);
        self.hdr_len = kept;
        self.hdr_offset += keep_from as u64;
    }

    fn begin_segments(&mut self) {
        let h = &self.hdr;
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let mut granule = [0u8; 8];
        granule.copy_from_slice(&h[6..14]);
        self.page = PageInfo {
            offset: self.hdr_offset,
            flags: h[5],
            granule: u64::from_le_bytes(granule),
            serial: u32_at(14),
            sequence: u32_at(18),
            stored_crc: u32_at(22),
            nseg: usize::from(h[26]),
            last_end_seg: None,
            body_len: 0,
        };
        self.state = State::Segments;
    }

    /// The whole header is in: compute body layout, start the CRC, settle the pending packet.
    fn begin_body(&mut self) {
        let lacing = &self.hdr[FIXED_HEADER..FIXED_HEADER + self.page.nseg];
        self.page.body_len = lacing.iter().map(|&l| usize::from(l)).sum();
        self.page.last_end_seg = lacing.iter().rposition(|&l| l < 255);
        let mut crc = crc32_update(0, &self.hdr[..22]);
        crc = crc32_update(crc, &[0; 4]);
        self.crc = crc32_update(crc, &self.hdr[26..self.hdr_len]);
        self.seg_idx = 0;
        self.frag_active = false;
        self.body_read = 0;
        self.state = State::Body;

        let continued = self.page.flags & FLAG_CONTINUED != 0;
        // A pending packet continues only onto the very next page of its stream: after a
        // lost page the continuation belongs to some other packet, and gluing the two
        // would hand the decoder a well-formed but wrong packet.
        let next_page = self.last_page.is_some_and(|(serial, seq, _)| {
            serial == self.page.serial && seq.wrapping_add(1) == self.page.sequence
        });
        if self.in_packet && (!continued || !next_page) {
            // The packet in progress can never be completed: a page went missing.
            if self.keep {
                self.stats.dropped_packets += 1;
            }
            self.in_packet = false;
            self.pending = Vec::new();
        }
        if continued && !self.in_packet && self.page.nseg > 0 {
            // Its start was never seen (e.g. we resynchronised): skip the fragment.
            self.stats.orphaned_fragments += 1;
            self.in_packet = true;
            self.keep = false;
        }
    }

    /// Reads body bytes; returns bytes consumed, or the bytes consumed and an error.
    fn take_body(
        &mut self,
        input: &[u8],
        emit: &mut dyn FnMut(Packet),
    ) -> Result<usize, (usize, OggError)> {
        let mut used = 0;
        loop {
            if !self.frag_active {
                if self.seg_idx == self.page.nseg {
                    return self.end_page().map(|()| used).map_err(|e| (used, e));
                }
                self.begin_fragment().map_err(|e| (used, e))?;
            }
            let n = self.frag_left.min(input.len() - used);
            if n > 0 {
                let chunk = &input[used..used + n];
                self.crc = crc32_update(self.crc, chunk);
                if self.keep {
                    self.pending.extend_from_slice(chunk);
                }
                used += n;
                self.frag_left -= n;
                self.body_read += n;
            }
            if self.frag_left > 0 {
                return Ok(used);
            }
            self.frag_active = false;
            self.seg_idx = self.frag_end_seg + 1;
            if self.frag_ends_packet {
                self.in_packet = false;
                if self.keep {
                    self.stats.packets += 1;
                    emit(Packet {
                        data: std::mem::take(&mut self.pending),
                        serial: self.page.serial,
                        page_sequence: self.page.sequence,
                        page_granule: self.page.granule,
                        last_on_page: Some(self.frag_end_seg) == self.page.last_end_seg,
                        bos: self.page.flags & FLAG_BOS != 0,
                        eos: self.page.flags & FLAG_EOS != 0,
                    });
                }
            }
        }
    }

    /// Starts the run of segments at `seg_idx` that belongs to one packet on this page.
    fn begin_fragment(&mut self) -> Result<(), OggError> {
        let lacing = &self.hdr[FIXED_HEADER + self.seg_idx..FIXED_HEADER + self.page.nseg];
        let (len, end, ends) = match lacing.iter().position(|&l| l < 255) {
            Some(i) => (255 * i + usize::from(lacing[i]), self.seg_idx + i, true),
            None => (255 * lacing.len(), self.page.nseg - 1, false),
        };
        if !self.in_packet {
            self.in_packet = true;
            self.keep = true;
            self.pending = Vec::new();
        }
        if self.keep {
            let size = self.pending.len() + len;
            if size > self.max_packet {
                self.stats.dropped_packets += 1;
                return Err(OggError::PacketTooLarge {
                    page_sequence: self.page.sequence,
                    offset: self.page.offset,
                    size,
                    max: self.max_packet,
                });
            }
            if size > self.pending.capacity() {
                // Exact when the packet ends here; geometric (capped at the limit) while it
                // spans pages, so a long packet is not re-copied on every page.
                let target = if ends {
                    size
                } else {
                    size.max(self.pending.capacity() * 2).min(self.max_packet)
                };
                self.pending.reserve_exact(target - self.pending.len());
            }
        }
        self.frag_active = true;
        self.frag_left = len;
        self.frag_end_seg = end;
        self.frag_ends_packet = ends;
        Ok(())
    }

    fn end_page(&mut self) -> Result<(), OggError> {
        self.state = State::Header;
        self.hdr_len = 0;
        if self.crc != self.page.stored_crc {
            self.stats.crc_errors += 1;
            if self.in_packet && self.keep {
                self.stats.dropped_packets += 1;
            }
            self.in_packet = false;
            self.pending = Vec::new();
            return Err(OggError::Crc {
                page_sequence: self.page.sequence,
                offset: self.page.offset,
                stored: self.page.stored_crc,
                computed: self.crc,
            });
        }
        if let Some((serial, seq, _)) = self.last_page {
            if serial == self.page.serial && seq.wrapping_add(1) != self.page.sequence {
                self.stats.sequence_gaps += 1;
            }
        }
        self.last_page = Some((self.page.serial, self.page.sequence, self.page.offset));
        self.stats.pages += 1;
        self.stats.eos_seen |= self.page.flags & FLAG_EOS != 0;
        self.junk_run = 0;
        self.junk_head_len = 0;
        Ok(())
    }

    /// Counts junk and keeps the start of the current junk run for error messages.
    fn skip(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let room = JUNK_SAMPLE - self.junk_head_len;
        let n = room.min(bytes.len());
        self.junk_head[self.junk_head_len..self.junk_head_len + n].copy_from_slice(&bytes[..n]);
        self.junk_head_len += n;
        self.junk_run += bytes.len() as u64;
        self.stats.skipped_bytes += bytes.len() as u64;
    }

    /// After an error: drop the rest of the chunk and resynchronise on the next push.
    fn skip_after_error(&mut self, rest: &[u8]) {
        self.stats.skipped_bytes += rest.len() as u64;
        self.pos += rest.len() as u64;
        self.state = State::Header;
        self.hdr_len = 0;
        self.frag_active = false;
        self.in_packet = false;
        self.pending = Vec::new();
    }
}

/// A short, human description of bytes that are not Ogg (for error messages).
fn describe(sample: &[u8]) -> String {
    let trimmed = match sample.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(i) => &sample[i..],
        None => sample,
    };
    let printable = trimmed
        .iter()
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace());
    let quoted = || {
        let text: String = trimmed
            .iter()
            .take(40)
            .map(|&b| {
                if b.is_ascii_whitespace() {
                    ' '
                } else {
                    b as char
                }
            })
            .collect();
        format!("'{}'", text.trim_end())
    };
    match trimmed.first() {
        None => "nothing but whitespace".to_string(),
        Some(b'<') if printable => format!("looks like HTML/XML: starts with {}", quoted()),
        Some(b'{') | Some(b'[') if printable => {
            format!(
                "looks like JSON, e.g. an API error: starts with {}",
                quoted()
            )
        }
        Some(_) if printable => format!("looks like text: starts with {}", quoted()),
        Some(_) => {
            let hex: Vec<String> = trimmed
                .iter()
                .take(16)
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("binary, starts with {}", hex.join(" "))
        }
    }
}

/// CRC-32 as Ogg defines it: polynomial 0x04c11db7, no reflection, initial value 0.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            bit += 1;
        }
        table[i] = r;
        i += 1;
    }
    table
};

fn crc32_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = (crc << 8) ^ CRC_TABLE[((crc >> 24) as u8 ^ b) as usize];
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_reference_values() {
        // Reference values from the Ogg/Vorbis CRC (also checked by the `ogg` crate).
        assert_eq!(crc32_update(0, b"==!"), 0x9f85_8776);
        assert_eq!(crc32_update(crc32_update(0, b"=="), b"!"), 0x9f85_8776);
    }

    #[test]
    fn describes_html_json_text_and_binary() {
        assert!(describe(b"<html><body>502 Bad Gateway").contains("HTML/XML: starts with '<html>"));
        assert!(describe(b"\n {\"error\": {\"message\": \"x\"}}").contains("JSON"));
        assert!(describe(b"Internal Server Error").contains("text: starts with 'Internal"));
        assert_eq!(
            describe(&[0xff, 0xfb, 0x90]),
            "binary, starts with ff fb 90"
        );
    }

    #[test]
    fn rejected_header_is_rescanned_for_a_capture_inside_it() {
        // A false "OggS" with version 1, whose bytes contain the real capture at offset 5.
        let mut d = Demuxer::new();
        let mut bytes = b"OggS\x01OggS\x00".to_vec();
        bytes.resize(5 + 27, 0);
        bytes[5 + 26] = 1; // one lacing value still to come
        d.push(&bytes, &mut |_| {}).unwrap();
        assert_eq!(d.stats().skipped_bytes, 5);
        assert_eq!(d.state, State::Segments);
        assert_eq!(d.page.offset, 5);
    }
}
