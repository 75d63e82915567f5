//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Two input shapes are used:
//! - codec targets: the first byte picks a mode. Mode 0 treats the rest as wire text (parse it,
//!   and if it parses, re-encode and parse again: the value must survive). Any other mode builds
//!   a valid value from the bytes with [`arbitrary::Unstructured`], encodes it, sends it through
//!   the line framer the servers use, and asserts `parse(encode(x)) == x`.
//! - server targets: a [`Script`] of connection events (open, data, EOF, time passes, the client
//!   reads) fed to a server's sans-IO core, checking invariants after every step.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Result, Unstructured};
use wire::line::LineFramer;

/// Frames `line` as a sender does (`line` + `\r\n`), runs the bytes through a [`LineFramer`]
/// with a cap of `max_line` and returns the one line that comes out, as text.
///
/// # Panics
/// If the framer does not return exactly that one line (that is a framing bug).
pub fn through_framer(line: &str, max_line: usize) -> String {
    let mut framer = LineFramer::new(max_line);
    let mut wire = line.as_bytes().to_vec();
    wire.extend_from_slice(b"\r\n");
    framer.push(&wire);
    let got = match framer.next_str() {
        Some(Ok(got)) => got.to_owned(),
        other => panic!("framing {line:?} gave {other:?}"),
    };
    assert_eq!(framer.next_line(), None, "one line in, more out: {line:?}");
    got
}

/// Asserts that an encoded message is one line: sent with `\r\n` appended, the receiving
/// framer gives back exactly it.
///
/// # Panics
/// If it contains a `\n` or does not survive framing.
pub fn assert_one_line(encoded: &str) {
    assert!(
        !encoded.contains('\n'),
        "an encoded message spans lines: {encoded:?}"
    );
    if !encoded.is_empty() {
        assert_eq!(through_framer(encoded, encoded.len()), encoded);
    }
}

/// A line as a framer hands it out: `None` if `text` could not be one (it has a `\n`, or is
/// empty).
pub fn as_line(text: &str) -> Option<&str> {
    (!text.is_empty() && !text.contains('\n')).then_some(text)
}

/// A string of at most `max` bytes drawn from `u`, with the characters in `banned` replaced by
/// `_` (so the length in bytes is kept).
pub fn text_without(u: &mut Unstructured<'_>, max: usize, banned: &[char]) -> Result<String> {
    let raw: String = u.arbitrary()?;
    let mut out = String::with_capacity(raw.len().min(max));
    for c in raw.chars() {
        let c = if banned.contains(&c) { '_' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    Ok(out)
}

/// A string of `min..=max` characters, each picked from `alphabet`.
pub fn text_from(
    u: &mut Unstructured<'_>,
    alphabet: &[u8],
    min: usize,
    max: usize,
) -> Result<String> {
    let len = u.int_in_range(min..=max)?;
    let mut out = String::with_capacity(len);
    for _ in 0..len {
        out.push(char::from(*u.choose(alphabet)?));
    }
    Ok(out)
}

/// An IPv4 or IPv6 address.
pub fn ip(u: &mut Unstructured<'_>) -> Result<IpAddr> {
    Ok(if u.arbitrary()? {
        IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?))
    } else {
        IpAddr::V6(Ipv6Addr::from(u.arbitrary::<u128>()?))
    })
}

/// A socket address as a wire text can carry it (no IPv6 flow info or scope id: the text form
/// has no room for the first, and our peers never send the second).
pub fn socket_addr(u: &mut Unstructured<'_>) -> Result<SocketAddr> {
    Ok(SocketAddr::new(ip(u)?, u.arbitrary()?))
}

/// One step of a [`Script`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A client connects from peer number `peer` (see the target for the peer table).
    Open {
        /// Index into the target's peer table.
        peer: u8,
    },
    /// Bytes arrive on connection slot `slot`.
    Data {
        /// Connection slot.
        slot: u8,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// The client on `slot` closes its sending side.
    Eof {
        /// Connection slot.
        slot: u8,
    },
    /// The client on `slot` reads everything pending (the driver writes it all).
    Read {
        /// Connection slot.
        slot: u8,
    },
    /// Time passes: `millis` milliseconds (times 100 for large values), then the core's timer
    /// runs.
    Advance {
        /// How long.
        millis: u32,
    },
    /// A target-specific event with an argument (e.g. a dial-back result).
    Other {
        /// Which.
        kind: u8,
        /// Its argument.
        arg: u8,
    },
}

/// A byte format for event sequences that is easy to write seeds for by hand:
///
/// each step starts with a byte `b`: `b & 7` is the kind, `b >> 3` the slot/peer/argument.
/// `0` open, `1` data (then a length byte `n`, then `n` bytes), `2` EOF, `3` read,
/// `4` advance (then one byte: milliseconds; > 200 means `(b - 200) * 1000` ms), `5..=7` other.
/// A `1` followed by `0xFF` takes the rest of the input as data.
pub struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    /// A script over these bytes.
    pub fn new(data: &'a [u8]) -> Self {
        Script { data }
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
}

impl Iterator for Script<'_> {
    type Item = Step;

    fn next(&mut self) -> Option<Step> {
        let b = self.byte()?;
        let high = b >> 3;
        Some(match b & 7 {
            0 => Step::Open { peer: high },
            1 => {
                let len = self.byte().unwrap_or(0);
                let take = if len == 0xFF {
                    self.data.len()
                } else {
                    usize::from(len).min(self.data.len())
                };
                let (bytes, rest) = self.data.split_at(take);
                self.data = rest;
                Step::Data {
                    slot: high,
                    bytes: bytes.to_vec(),
                }
            }
            2 => Step::Eof { slot: high },
            3 => Step::Read { slot: high },
            4 => {
                let m = u32::from(self.byte().unwrap_or(0));
                let millis = if m > 200 { (m - 200) * 1000 } else { m };
                Step::Advance { millis }
            }
            kind => Step::Other {
                kind: kind - 5,
                arg: high,
            },
        })
    }
}

/// Complete `\r\n`-terminated lines at the start of `out`, and how many bytes they take; a
/// `RELAY OK` line ends them (what follows is relayed bytes).
pub fn complete_lines(out: &[u8]) -> (Vec<String>, usize) {
    let mut lines = Vec::new();
    let mut used = 0;
    while let Some(pos) = out[used..].iter().position(|&b| b == b'\n') {
        let line = &out[used..used + pos];
        let line = line.strip_suffix(b"\r").unwrap_or_else(|| {
            panic!(
                "server line without \\r: {:?}",
                String::from_utf8_lossy(line)
            )
        });
        let text = std::str::from_utf8(line)
            .unwrap_or_else(|e| panic!("server sent non-UTF-8 line ({e}): {line:?}"));
        lines.push(text.to_owned());
        used += pos + 1;
        if text == "RELAY OK" {
            // From here on the stream carries relayed bytes, not server lines.
            break;
        }
    }
    (lines, used)
}

/// Checks that `out` starts with one complete, well-formed HTTP/1.1 response whose
/// `Content-Length` matches its body; returns the status.
///
/// # Panics
/// If it does not.
pub fn assert_http_response(out: &[u8]) -> u16 {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "server output is not a complete HTTP response ({other:?}): {:?}",
            String::from_utf8_lossy(out)
        ),
    };
    let length: usize = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Content-Length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
        .unwrap_or_else(|| panic!("response without Content-Length: {response:?}"));
    assert_eq!(
        out.len() - head_len,
        length,
        "Content-Length does not match the body: {:?}",
        String::from_utf8_lossy(out)
    );
    response.code.unwrap_or(0)
}

/// With `FUZZ_TRACE=1` in the environment, prints `what` to stderr: to check by hand that a
/// seed reaches what it is meant to (`FUZZ_TRACE=1 target/.../rendezvous_server corpus/...`).
pub fn trace(what: &dyn std::fmt::Display) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some()) {
        eprintln!("trace: {what}");
    }
}
