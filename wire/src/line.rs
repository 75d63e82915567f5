//! A bounded line framer for the line protocols (rendezvous, overlay, dht-msg).
//!
//! Bytes go in with [`LineFramer::push`]; complete lines come out of
//! [`LineFramer::next_line`] without their terminator. Both `\r\n` (what PyP2P sends) and a bare
//! `\n` end a line. Empty lines are skipped, as PyP2P's server ignores them.
//!
//! A line longer than the configured limit is reported once as [`LineError::TooLong`] and the rest
//! of it is discarded up to the next newline, so a caller may choose to keep the connection (the
//! node does not; the servers close it). Nothing is allocated beyond `limit` plus one read.
//!
//! ```
//! use wire::line::LineFramer;
//!
//! let mut framer = LineFramer::new(64);
//! framer.push(b"BOOTSTRAP 5\r\nSOURCE ");
//! assert_eq!(framer.next_line(), Some(Ok(&b"BOOTSTRAP 5"[..])));
//! assert_eq!(framer.next_line(), None); // "SOURCE " is not complete yet
//! framer.push(b"TCP\n");
//! assert_eq!(framer.next_line(), Some(Ok(&b"SOURCE TCP"[..])));
//! ```

use thiserror::Error;

/// Default cap on one line, in bytes, without its terminator (64 KiB).
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;

/// Buffers larger than this are given back to the allocator when they empty, so an idle
/// connection costs no buffer memory after a burst.
const RETAINED_CAPACITY_BYTES: usize = 4 * 1024;

/// What can be wrong with one line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LineError {
    /// The line exceeded the configured cap. `len` is how many bytes had been seen when it was
    /// cut (at least `limit + 1`).
    #[error("line too long: {len} bytes (limit {limit})")]
    TooLong {
        /// Bytes of the line seen so far.
        len: usize,
        /// The configured cap.
        limit: usize,
    },
    /// The line is not valid UTF-8 (only from [`LineFramer::next_str`]).
    #[error("line is not valid UTF-8 (first bad byte at offset {valid_up_to})")]
    NotUtf8 {
        /// Length of the valid UTF-8 prefix.
        valid_up_to: usize,
    },
}

/// Splits a byte stream into lines, with a cap on line length. Sans-IO: it never reads a socket.
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    /// First byte not yet handed out.
    start: usize,
    /// Bytes after `start` already searched for a newline (so a slow sender is not rescanned).
    scanned: usize,
    /// True while skipping the tail of a line that was already reported too long.
    discarding: bool,
    max_line: usize,
}

impl Default for LineFramer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE_BYTES)
    }
}

impl LineFramer {
    /// A framer that accepts lines of at most `max_line` bytes (terminator excluded).
    pub fn new(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            discarding: false,
            max_line,
        }
    }

    /// The configured cap on one line.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Bytes received but not yet returned as lines.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Bytes of heap memory the framer holds.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends received bytes. Lines handed out before are invalidated (they borrow the buffer).
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next complete line without its `\n` or `\r\n`, skipping empty lines; `None` when no
    /// complete line is buffered.
    pub fn next_line(&mut self) -> Option<Result<&[u8], LineError>> {
        loop {
            let pending = &self.buf[self.start..];
            let Some(offset) = memchr_newline(&pending[self.scanned..]) else {
                self.scanned = pending.len();
                // Allow one byte more than the cap: it may be the `\r` of a `\r\n`.
                if pending.len() > self.max_line + 1 {
                    let len = pending.len();
                    self.start = self.buf.len();
                    self.scanned = 0;
                    self.release_if_idle();
                    if self.discarding {
                        return None;
                    }
                    self.discarding = true;
                    return Some(Err(LineError::TooLong {
                        len,
                        limit: self.max_line,
                    }));
                }
                self.release_if_idle();
                return None;
            };
            let newline = self.start + self.scanned + offset;
            let line_start = self.start;
            self.start = newline + 1;
            self.scanned = 0;
            let mut end = newline;
            if end > line_start && self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            if self.discarding {
                self.discarding = false;
                continue;
            }
            let len = end - line_start;
            if len > self.max_line {
                return Some(Err(LineError::TooLong {
                    len,
                    limit: self.max_line,
                }));
            }
            if len == 0 {
                continue;
            }
            return Some(Ok(&self.buf[line_start..end]));
        }
    }

    /// Removes and returns every byte received but not yet returned as a line, leaving the
    /// framer empty. For protocols that switch from lines to raw bytes after some line (the
    /// rendezvous's `RELAY`): the bytes that came in the same read as that line are not lost.
    ///
    /// ```
    /// use wire::line::LineFramer;
    ///
    /// let mut framer = LineFramer::new(64);
    /// framer.push(b"RELAY t\r\n\xff raw\nbytes");
    /// assert_eq!(framer.next_line(), Some(Ok(&b"RELAY t"[..])));
    /// assert_eq!(framer.take_buffered(), b"\xff raw\nbytes");
    /// assert_eq!(framer.buffered(), 0);
    /// ```
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.drain(..self.start);
        self.start = 0;
        self.scanned = 0;
        self.discarding = false;
        buf
    }

    /// Like [`next_line`](Self::next_line), but checks that the line is UTF-8.
    pub fn next_str(&mut self) -> Option<Result<&str, LineError>> {
        Some(match self.next_line()? {
            Ok(bytes) => std::str::from_utf8(bytes).map_err(|e| LineError::NotUtf8 {
                valid_up_to: e.valid_up_to(),
            }),
            Err(e) => Err(e),
        })
    }

    /// Frees a large buffer once everything in it has been handed out.
    fn release_if_idle(&mut self) {
        if self.start == self.buf.len() {
            self.start = 0;
            self.scanned = 0;
            if self.buf.capacity() > RETAINED_CAPACITY_BYTES {
                self.buf = Vec::new();
            } else {
                self.buf.clear();
            }
        }
    }
}

fn memchr_newline(haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(framer: &mut LineFramer) -> Vec<Result<Vec<u8>, LineError>> {
        let mut out = Vec::new();
        while let Some(item) = framer.next_line() {
            out.push(item.map(<[u8]>::to_vec));
        }
        out
    }

    #[test]
    fn crlf_and_bare_lf_both_end_lines() {
        let mut f = LineFramer::new(100);
        f.push(b"a\r\nb\nc\r\n");
        assert_eq!(
            drain(&mut f),
            vec![Ok(b"a".to_vec()), Ok(b"b".to_vec()), Ok(b"c".to_vec())]
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn empty_lines_are_skipped() {
        let mut f = LineFramer::new(100);
        f.push(b"\r\n\n\r\nx\n\n");
        assert_eq!(drain(&mut f), vec![Ok(b"x".to_vec())]);
    }

    #[test]
    fn a_line_split_across_pushes_is_joined() {
        let mut f = LineFramer::new(100);
        for chunk in [&b"BOOT"[..], b"STRAP", b" 5\r", b"\nQUIT"] {
            f.push(chunk);
        }
        assert_eq!(drain(&mut f), vec![Ok(b"BOOTSTRAP 5".to_vec())]);
        assert_eq!(f.buffered(), 4);
        f.push(b"\r\n");
        assert_eq!(drain(&mut f), vec![Ok(b"QUIT".to_vec())]);
    }

    #[test]
    fn a_cr_split_from_its_lf_is_still_stripped() {
        let mut f = LineFramer::new(3);
        f.push(b"abc\r");
        assert_eq!(drain(&mut f), vec![]);
        f.push(b"\n");
        assert_eq!(drain(&mut f), vec![Ok(b"abc".to_vec())]);
    }

    #[test]
    fn a_line_at_the_cap_is_accepted_one_over_is_not() {
        let mut f = LineFramer::new(4);
        f.push(b"abcd\nabcde\nok\n");
        assert_eq!(
            drain(&mut f),
            vec![
                Ok(b"abcd".to_vec()),
                Err(LineError::TooLong { len: 5, limit: 4 }),
                Ok(b"ok".to_vec())
            ]
        );
    }

    #[test]
    fn an_unterminated_oversized_line_is_reported_once_then_skipped() {
        let mut f = LineFramer::new(8);
        f.push(&[b'x'; 20]);
        assert_eq!(
            drain(&mut f),
            vec![Err(LineError::TooLong { len: 20, limit: 8 })]
        );
        assert_eq!(f.buffered(), 0, "the oversized bytes are not kept");
        f.push(&[b'y'; 20]);
        assert_eq!(
            drain(&mut f),
            vec![],
            "still the same line: no second error"
        );
        f.push(b"tail\nnext\n");
        assert_eq!(drain(&mut f), vec![Ok(b"next".to_vec())]);
    }

    #[test]
    fn non_utf8_is_a_typed_error() {
        let mut f = LineFramer::new(100);
        f.push(b"ok\n\xff\xfe\nfine\n");
        assert_eq!(f.next_str(), Some(Ok("ok")));
        assert_eq!(
            f.next_str(),
            Some(Err(LineError::NotUtf8 { valid_up_to: 0 }))
        );
        assert_eq!(f.next_str(), Some(Ok("fine")));
        assert_eq!(f.next_str(), None);
    }

    #[test]
    fn large_buffers_are_released_when_drained() {
        let mut f = LineFramer::new(100_000);
        f.push(&vec![b'a'; 50_000]);
        f.push(b"\n");
        assert!(matches!(f.next_line(), Some(Ok(_))));
        assert_eq!(f.next_line(), None);
        assert_eq!(f.capacity(), 0);
    }

    #[test]
    fn take_buffered_returns_the_unread_tail_once() {
        let mut f = LineFramer::new(100);
        f.push(b"first\r\nsecond\n\x00\x01");
        assert_eq!(f.next_line(), Some(Ok(&b"first"[..])));
        assert_eq!(f.take_buffered(), b"second\n\x00\x01");
        assert_eq!(f.take_buffered(), b"");
        assert_eq!(f.capacity(), 0);
        f.push(b"again\n");
        assert_eq!(drain(&mut f), vec![Ok(b"again".to_vec())]);
    }

    #[test]
    fn error_messages_name_the_values() {
        assert_eq!(
            LineError::TooLong {
                len: 70_000,
                limit: 65_536
            }
            .to_string(),
            "line too long: 70000 bytes (limit 65536)"
        );
    }

    proptest! {
        /// However the stream is cut into pushes, the same lines come out.
        #[test]
        fn splitting_does_not_change_the_lines(
            lines in proptest::collection::vec("[a-zA-Z0-9 ]{1,20}", 0..20),
            crlf in proptest::collection::vec(any::<bool>(), 20),
            cuts in proptest::collection::vec(0usize..400, 0..10),
        ) {
            let mut stream = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                stream.extend_from_slice(line.as_bytes());
                stream.extend_from_slice(if crlf[i] { b"\r\n" } else { b"\n" });
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort_unstable();
            let mut f = LineFramer::new(64);
            let mut got = Vec::new();
            let mut prev = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                f.push(&stream[prev..cut]);
                prev = cut;
                while let Some(line) = f.next_str() {
                    got.push(line.unwrap().to_string());
                }
            }
            let want: Vec<String> = lines.into_iter().filter(|l| !l.is_empty()).collect();
            prop_assert_eq!(got, want);
        }

        /// Arbitrary bytes never panic and never yield a line over the cap.
        #[test]
        fn arbitrary_bytes_respect_the_cap(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut f = LineFramer::new(16);
            for chunk in chunks {
                f.push(&chunk);
                while let Some(item) = f.next_line() {
                    if let Ok(line) = item {
                        prop_assert!(line.len() <= 16);
                        prop_assert!(!line.contains(&b'\n'));
                    }
                }
                prop_assert!(f.buffered() <= 16 + 1 + 64);
            }
        }
    }
}
