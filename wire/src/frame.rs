//! Length-prefixed frames, and how a listener tells an encrypted connection from a plain one.
//!
//! An encrypted connection (`node::secure`) carries Noise messages, each in one frame: a u16
//! big-endian length, then that many bytes (at most 65535, Noise's own limit). Before its first
//! frame each side sends [`NOISE_PREAMBLE`], 8 bytes that start with a NUL:
//!
//! ```text
//!   dialer   → listener: 00 70 32 70 2d 6e 78 31  ("\0p2p-nx1")  frame(handshake message 1) ...
//!   listener → dialer:   00 70 32 70 2d 6e 78 31                  frame(handshake message 2) ...
//! ```
//!
//! **Sniff rule** ([`sniff`]): a line protocol (PyP2P, or our plain-text mode) never starts a
//! connection with a NUL byte: its first byte is printable ASCII, `\r` or `\n`. So a first byte
//! 0x00 means our handshake (and the next 7 bytes must be the rest of the preamble, else the
//! connection is garbage); any other first byte means plain lines. One byte decides; the rest
//! names the protocol version, so a future `\0p2p-nx2` is refused with a clear reason by this
//! version rather than misread.
//!
//! [`FrameDecoder`] checks each length against its cap as soon as the two length bytes are in,
//! before it waits for (or keeps) the body, so a peer cannot make it buffer more than the cap
//! plus one push.
//!
//! ```
//! use wire::frame::{FrameDecoder, encode_frame};
//!
//! let mut wire = Vec::new();
//! encode_frame(b"hello", &mut wire)?;
//! assert_eq!(wire, b"\x00\x05hello");
//! let mut decoder = FrameDecoder::new(1024);
//! decoder.push(&wire[..3]);
//! assert_eq!(decoder.next_frame(), None); // not complete yet
//! decoder.push(&wire[3..]);
//! assert_eq!(decoder.next_frame(), Some(Ok(&b"hello"[..])));
//! # Ok::<(), wire::frame::FrameError>(())
//! ```

use thiserror::Error;

/// Bytes of a frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = 2;
/// Largest frame body (the u16 prefix's range, and Noise's message limit).
pub const MAX_FRAME_BYTES: usize = 65535;
/// What each side of an encrypted connection sends first: NUL, then `p2p-nx1` (Noise XX,
/// version 1). It is also the Noise prologue, so both sides agree on it or the handshake fails.
pub const NOISE_PREAMBLE: [u8; 8] = *b"\0p2p-nx1";

/// Buffers larger than this are given back when they empty.
const RETAINED_CAPACITY_BYTES: usize = 4 * 1024;

/// What can be wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// A frame's length is over the cap (checked before its body is read).
    #[error("frame of {len} bytes over the limit of {limit}")]
    TooLarge {
        /// The length the prefix announced (or the payload to encode).
        len: usize,
        /// The cap.
        limit: usize,
    },
}

/// What the first bytes of a connection say (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// Not enough bytes yet: the first is NUL and the preamble is not complete (or nothing
    /// arrived).
    NeedMore,
    /// Our encrypted handshake ([`NOISE_PREAMBLE`]).
    Noise,
    /// Plain lines (PyP2P, or a node in plain-text mode).
    Plain,
    /// A NUL first byte, then not our preamble: another protocol or another version.
    Unknown,
}

/// Classifies a connection by its first bytes (the whole of what arrived so far).
///
/// ```
/// use wire::frame::{NOISE_PREAMBLE, Sniff, sniff};
///
/// assert_eq!(sniff(b""), Sniff::NeedMore);
/// assert_eq!(sniff(b"P2P/1 IAM 7441"), Sniff::Plain);
/// assert_eq!(sniff(b"\r\n"), Sniff::Plain);
/// assert_eq!(sniff(&NOISE_PREAMBLE[..3]), Sniff::NeedMore);
/// assert_eq!(sniff(&NOISE_PREAMBLE), Sniff::Noise);
/// assert_eq!(sniff(b"\0p2p-nx2"), Sniff::Unknown);
/// ```
pub fn sniff(first: &[u8]) -> Sniff {
    match first.first() {
        None => Sniff::NeedMore,
        Some(&b) if b != 0 => Sniff::Plain,
        Some(_) => {
            let n = first.len().min(NOISE_PREAMBLE.len());
            if first[..n] != NOISE_PREAMBLE[..n] {
                Sniff::Unknown
            } else if n < NOISE_PREAMBLE.len() {
                Sniff::NeedMore
            } else {
                Sniff::Noise
            }
        }
    }
}

/// Appends `payload` as one frame (length prefix and bytes) to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u16::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: payload.len(),
        limit: MAX_FRAME_BYTES,
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Splits a byte stream into frames, with a cap on a frame's length. Sans-IO.
///
/// After a frame over the cap the stream cannot be resynchronised: the error is returned again
/// on every call (close the connection).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// First byte not yet handed out.
    start: usize,
    max_frame: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder that accepts frames of at most `max_frame` bytes (at most
    /// [`MAX_FRAME_BYTES`]; larger caps are lowered to it).
    pub fn new(max_frame: usize) -> FrameDecoder {
        FrameDecoder {
            buf: Vec::new(),
            start: 0,
            max_frame: max_frame.min(MAX_FRAME_BYTES),
            failed: None,
        }
    }

    /// The cap on one frame.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Sets another cap (e.g. a larger one once a handshake is done).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.min(MAX_FRAME_BYTES);
    }

    /// Bytes received and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes of heap memory held.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends received bytes. Frames handed out before are invalidated.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame's body; `None` when none is complete. A length over the cap is
    /// an error as soon as its two bytes are in.
    pub fn next_frame(&mut self) -> Option<Result<&[u8], FrameError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        let pending = &self.buf[self.start..];
        if pending.len() < FRAME_HEADER_BYTES {
            self.release_if_idle();
            return None;
        }
        let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
        if len > self.max_frame {
            let e = FrameError::TooLarge {
                len,
                limit: self.max_frame,
            };
            self.failed = Some(e.clone());
            self.buf = Vec::new();
            self.start = 0;
            return Some(Err(e));
        }
        if pending.len() < FRAME_HEADER_BYTES + len {
            return None;
        }
        let body = self.start + FRAME_HEADER_BYTES;
        self.start = body + len;
        Some(Ok(&self.buf[body..body + len]))
    }

    /// Removes and returns every byte not yet handed out as a frame.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.drain(..self.start);
        self.start = 0;
        buf
    }

    fn release_if_idle(&mut self) {
        if self.start == self.buf.len() {
            self.start = 0;
            if self.buf.capacity() > RETAINED_CAPACITY_BYTES {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(d: &mut FrameDecoder) -> Vec<Result<Vec<u8>, FrameError>> {
        let mut out = Vec::new();
        while let Some(item) = d.next_frame() {
            let stop = item.is_err();
            out.push(item.map(<[u8]>::to_vec));
            if stop {
                break;
            }
        }
        out
    }

    #[test]
    fn the_cap_is_checked_on_the_length_bytes_alone() {
        let mut d = FrameDecoder::new(100);
        d.push(&[0, 101]);
        assert_eq!(
            d.next_frame(),
            Some(Err(FrameError::TooLarge {
                len: 101,
                limit: 100
            }))
        );
        assert_eq!(d.buffered(), 0, "nothing of it is kept");
        d.push(&[0, 1, 7]);
        assert!(matches!(d.next_frame(), Some(Err(_))), "the error sticks");
        assert_eq!(
            FrameError::TooLarge {
                len: 70_000,
                limit: 65_535
            }
            .to_string(),
            "frame of 70000 bytes over the limit of 65535"
        );
    }

    #[test]
    fn frames_at_the_cap_and_empty_frames_pass() {
        let mut wire = Vec::new();
        encode_frame(&[1; 100], &mut wire).unwrap();
        encode_frame(b"", &mut wire).unwrap();
        let mut d = FrameDecoder::new(100);
        d.push(&wire);
        assert_eq!(drain(&mut d), vec![Ok(vec![1; 100]), Ok(vec![])]);
    }

    #[test]
    fn encoding_refuses_what_the_prefix_cannot_say() {
        let mut out = Vec::new();
        assert_eq!(
            encode_frame(&vec![0; MAX_FRAME_BYTES + 1], &mut out),
            Err(FrameError::TooLarge {
                len: 65536,
                limit: MAX_FRAME_BYTES
            })
        );
        assert!(out.is_empty());
        assert_eq!(FrameDecoder::new(1 << 20).max_frame(), MAX_FRAME_BYTES);
    }

    #[test]
    fn take_buffered_returns_the_unread_tail() {
        let mut d = FrameDecoder::new(10);
        d.push(b"\x00\x01a\x00\x05ab");
        assert_eq!(d.next_frame(), Some(Ok(&b"a"[..])));
        assert_eq!(d.next_frame(), None);
        assert_eq!(d.take_buffered(), b"\x00\x05ab");
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn sniff_decides_on_the_first_byte() {
        for plain in [&b"P"[..], b"\n", b"\r\n", b"REVERSE", b"\xff", b"\x01"] {
            assert_eq!(sniff(plain), Sniff::Plain, "{plain:?}");
        }
        assert_eq!(sniff(b"\0"), Sniff::NeedMore);
        assert_eq!(sniff(b"\0x"), Sniff::Unknown);
        let mut long = NOISE_PREAMBLE.to_vec();
        long.extend_from_slice(b"\x00\x20 and a frame");
        assert_eq!(sniff(&long), Sniff::Noise);
    }

    proptest! {
        /// However the stream is cut, the same frames come out, and never more than the cap
        /// plus one push stays buffered.
        #[test]
        fn splitting_does_not_change_the_frames(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..12),
            cuts in proptest::collection::vec(0usize..1200, 0..10),
        ) {
            let mut wire = Vec::new();
            for f in &frames {
                encode_frame(f, &mut wire).unwrap();
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(wire.len())).collect();
            cuts.sort_unstable();
            let mut d = FrameDecoder::new(80);
            let mut got = Vec::new();
            let mut prev = 0;
            for cut in cuts.into_iter().chain([wire.len()]) {
                d.push(&wire[prev..cut]);
                let pushed = cut - prev;
                prev = cut;
                while let Some(f) = d.next_frame() {
                    got.push(f.unwrap().to_vec());
                }
                prop_assert!(d.buffered() <= FRAME_HEADER_BYTES + 80 + pushed);
            }
            prop_assert_eq!(got, frames);
        }

        /// Arbitrary bytes never panic and never yield a frame over the cap.
        #[test]
        fn arbitrary_bytes_respect_the_cap(bytes in proptest::collection::vec(any::<u8>(), 0..300), cap in 0usize..64) {
            let mut d = FrameDecoder::new(cap);
            d.push(&bytes);
            for f in drain(&mut d).into_iter().flatten() {
                prop_assert!(f.len() <= cap);
            }
        }
    }
}
