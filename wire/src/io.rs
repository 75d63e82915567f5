//! The one socket rule every event loop here shares: how to read an edge-triggered,
//! non-blocking stream ([`read_step`]) and how much to read from one connection per turn
//! ([`READ_BUDGET_BYTES`]). Plain `std::io`: the node's driver and the server kit both use it.

use std::io::{self, ErrorKind, Read};

/// Most bytes a driver reads from one connection before it turns to the other ready sockets.
///
/// With edge-triggered readiness a driver must read until the socket would block, but a peer
/// that writes as fast as it can never lets it block: read without a budget, one such peer
/// would keep the loop to itself and every other client would wait (measured with the
/// rendezvous server: a victim's request went from 0.1 ms to 25 ms). So a driver reads at most
/// this much per connection per turn, notes the connection as unfinished (no new edge will
/// come for it), and reads it again after the other events, polling without waiting while any
/// connection is unfinished.
pub const READ_BUDGET_BYTES: usize = 16 * 1024;

/// One step of reading an edge-triggered socket (see [`read_step`]).
#[derive(Debug)]
pub enum ReadStep {
    /// `len` bytes were read into the buffer; read again only if `more`.
    Data {
        /// Bytes read.
        len: usize,
        /// Whether the socket may hold more.
        more: bool,
    },
    /// The peer closed its side.
    Eof,
    /// Nothing more to read until the next readiness event.
    Blocked,
    /// The read failed.
    Failed(io::Error),
}

/// Reads once into `buf`, retrying on `EINTR`. A short read means the socket is drained and
/// new data raises a new edge, so no extra read is needed, **unless** the readiness event also
/// reported the peer's FIN or an error (`closing`): that raises no further edge, so the caller
/// must read on until [`ReadStep::Eof`].
///
/// ```
/// use wire::io::{read_step, ReadStep};
///
/// let mut buf = [0u8; 4];
/// let mut input: &[u8] = b"abcdef";
/// assert!(matches!(read_step(&mut input, &mut buf, false), ReadStep::Data { len: 4, more: true }));
/// assert!(matches!(read_step(&mut input, &mut buf, false), ReadStep::Data { len: 2, more: false }));
/// assert!(matches!(read_step(&mut input, &mut buf, true), ReadStep::Eof));
/// ```
pub fn read_step(stream: &mut impl Read, buf: &mut [u8], closing: bool) -> ReadStep {
    loop {
        return match stream.read(buf) {
            Ok(0) => ReadStep::Eof,
            Ok(len) => ReadStep::Data {
                len,
                more: len == buf.len() || closing,
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock => ReadStep::Blocked,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => ReadStep::Failed(e),
        };
    }
}
