//! [`SecureLines`]: the encrypted line reader/writer of a connection after its handshake.
//!
//! It takes the place of [`wire::line::LineFramer`] in a connection and adds the sending side:
//!
//! | plain (today) | encrypted |
//! |---|---|
//! | `framer.push(&buf[..n])` | `lines.push(&buf[..n])` (decrypts the complete frames) |
//! | `framer.next_str()` | `lines.next_str()` (same lines, same [`LineError`]s, plus [`SecureError`]) |
//! | `out.extend(line); out.extend(b"\r\n")` | `lines.queue_line(line)` |
//! | `stream.write(&out[written..])` | `lines.seal(&mut out)` once per turn, then the same writes |
//!
//! Queued lines are sealed together (up to [`MAX_PLAINTEXT_PER_FRAME`] bytes per frame), so a
//! burst of short lines costs one AEAD operation and 18 bytes per 64 KiB, not per line.

use std::fmt;

use thiserror::Error;
use wire::frame::{FRAME_HEADER_BYTES, FrameDecoder, FrameError, MAX_FRAME_BYTES};
use wire::line::{LineError, LineFramer};

/// Bytes of the authentication tag in every frame.
const TAG_BYTES: usize = 16;
/// Most plaintext bytes sealed into one frame.
pub const MAX_PLAINTEXT_PER_FRAME: usize = MAX_FRAME_BYTES - TAG_BYTES;
/// Plaintext buffers above this are given back when they empty.
const RETAINED_CAPACITY_BYTES: usize = 64 * 1024;

/// Why an encrypted connection must close.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SecureError {
    /// A frame's length is impossible.
    #[error("encrypted frame: {0}")]
    Frame(#[from] FrameError),
    /// A frame did not authenticate: it was changed on the way, or is not from this session.
    #[error(
        "encrypted frame {frame} failed authentication ({len} bytes): changed on the way or not from this peer"
    )]
    Tampered {
        /// Its number on this connection (0 is the first).
        frame: u64,
        /// Its length.
        len: usize,
    },
    /// A decrypted line is too long or not UTF-8.
    #[error("protocol error: {0}")]
    Line(#[from] LineError),
    /// Encrypting failed (the nonce counter ran out: 2^64 frames).
    #[error("cannot encrypt: {0}")]
    Seal(String),
}

/// An encrypted line channel (the transport half of a finished [`super::Handshake`]).
pub struct SecureLines {
    transport: snow::TransportState,
    frames: FrameDecoder,
    lines: LineFramer,
    /// Scratch for one decrypted frame.
    plain: Vec<u8>,
    /// Plaintext queued to send, not yet sealed.
    pending: Vec<u8>,
    /// Frames read so far.
    read_frames: u64,
    failed: Option<SecureError>,
}

impl SecureLines {
    pub(super) fn new(transport: snow::TransportState, max_line: usize) -> SecureLines {
        SecureLines {
            transport,
            frames: FrameDecoder::new(MAX_FRAME_BYTES),
            lines: LineFramer::new(max_line),
            plain: Vec::new(),
            pending: Vec::new(),
            read_frames: 0,
            failed: None,
        }
    }

    /// Ciphertext from the peer: every complete frame is decrypted into lines now. After a
    /// frame fails, the rest is ignored (the lines before it are still handed out).
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.frames.buffered() == 0 {
            // The usual case: whole frames straight from the read buffer, without copying
            // them into the frame decoder first.
            while let [high, low, rest @ ..] = bytes {
                let len = usize::from(u16::from_be_bytes([*high, *low]));
                if rest.len() < len {
                    break;
                }
                if !self.open(&rest[..len]) {
                    return;
                }
                bytes = &rest[len..];
            }
        }
        self.frames.push(bytes);
        loop {
            let frame = match self.frames.next_frame() {
                None => return,
                Some(Err(e)) => {
                    self.failed = Some(e.into());
                    return;
                }
                Some(Ok(frame)) => frame.to_vec(),
            };
            if !self.open(&frame) {
                return;
            }
        }
    }

    /// Decrypts one frame into the line framer; false (and the stream failed) if it does not
    /// authenticate.
    fn open(&mut self, frame: &[u8]) -> bool {
        self.plain.resize(frame.len(), 0);
        let Ok(n) = self.transport.read_message(frame, &mut self.plain) else {
            self.failed = Some(SecureError::Tampered {
                frame: self.read_frames,
                len: frame.len(),
            });
            self.frames = FrameDecoder::new(0);
            return false;
        };
        self.read_frames += 1;
        self.lines.push(&self.plain[..n]);
        true
    }

    /// The next complete line (without terminator, skipping empty lines), as
    /// [`LineFramer::next_str`]; after the lines that arrived intact, the error that ended the
    /// stream, if any (again on every call).
    pub fn next_str(&mut self) -> Option<Result<&str, SecureError>> {
        if let Some(line) = self.lines.next_str() {
            return Some(line.map_err(SecureError::from));
        }
        self.failed.clone().map(Err)
    }

    /// Queues `line` and `\r\n` to be sealed. The caller checks that it has no line break
    /// (as `Connection::send_line` does).
    pub fn queue_line(&mut self, line: &str) {
        self.pending.extend_from_slice(line.as_bytes());
        self.pending.extend_from_slice(b"\r\n");
    }

    /// Plaintext bytes queued and not yet sealed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Ciphertext bytes received and not yet decrypted, plus plaintext not yet taken as lines.
    pub fn buffered(&self) -> usize {
        self.frames.buffered() + self.lines.buffered()
    }

    /// Bytes of heap memory held.
    pub fn capacity(&self) -> usize {
        self.frames.capacity()
            + self.lines.capacity()
            + self.plain.capacity()
            + self.pending.capacity()
    }

    /// Encrypts everything queued into frames appended to `out` (the bytes to write).
    pub fn seal(&mut self, out: &mut Vec<u8>) -> Result<(), SecureError> {
        let frames = self.pending.len().div_ceil(MAX_PLAINTEXT_PER_FRAME);
        out.reserve(self.pending.len() + frames * (FRAME_HEADER_BYTES + TAG_BYTES));
        for chunk in self.pending.chunks(MAX_PLAINTEXT_PER_FRAME) {
            let header = out.len();
            let body = header + FRAME_HEADER_BYTES;
            out.resize(body + chunk.len() + TAG_BYTES, 0);
            let n = match self.transport.write_message(chunk, &mut out[body..]) {
                Ok(n) => n,
                Err(e) => {
                    out.truncate(header);
                    return Err(SecureError::Seal(e.to_string()));
                }
            };
            let len = u16::try_from(n).unwrap_or_else(|_| unreachable!("a frame fits a u16"));
            out[header..body].copy_from_slice(&len.to_be_bytes());
            out.truncate(body + n);
        }
        self.pending.clear();
        if self.pending.capacity() > RETAINED_CAPACITY_BYTES {
            self.pending = Vec::new();
        }
        Ok(())
    }
}

impl fmt::Debug for SecureLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureLines")
            .field("pending", &self.pending.len())
            .field("buffered", &self.buffered())
            .field("read_frames", &self.read_frames)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}
