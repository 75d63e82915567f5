//! The bounded line framer (`wire::line`), used by the rendezvous server, dht-msg and the
//! node on every byte a peer sends.
//!
//! Input: a cap (first byte), then the stream cut into pushes (each chunk is prefixed by its
//! length byte). The lines that come out, however the stream is cut, must equal a simple
//! reference model computed on the whole stream: split at `\n`, strip one `\r`, skip empty
//! lines, and one `TooLong` per line over the cap. Also: nothing is buffered beyond the cap plus
//! one push, and lines that fit round-trip (`decode(encode(lines)) == lines`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::line::{LineError, LineFramer};

#[derive(Debug, PartialEq, Eq)]
enum Item {
    Line(Vec<u8>),
    TooLong,
    NotUtf8,
}

/// What the framer must produce for `stream` with cap `max`, as if read all at once and then
/// closed (an unterminated tail only counts once it is over the cap plus one byte).
fn model(stream: &[u8], max: usize, utf8: bool) -> Vec<Item> {
    let mut items = Vec::new();
    let mut segments: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    let tail = segments.pop().unwrap_or_default();
    for segment in segments {
        let line = segment.strip_suffix(b"\r").unwrap_or(segment);
        if line.len() > max {
            items.push(Item::TooLong);
        } else if line.is_empty() {
        } else if utf8 && std::str::from_utf8(line).is_err() {
            items.push(Item::NotUtf8);
        } else {
            items.push(Item::Line(line.to_vec()));
        }
    }
    if tail.len() > max + 1 {
        items.push(Item::TooLong);
    }
    items
}

fn drain(framer: &mut LineFramer, utf8: bool, max: usize, out: &mut Vec<Item>) {
    loop {
        let item = if utf8 {
            match framer.next_str() {
                None => return,
                Some(Ok(s)) => Ok(s.as_bytes().to_vec()),
                Some(Err(e)) => Err(e),
            }
        } else {
            match framer.next_line() {
                None => return,
                Some(r) => r.map(<[u8]>::to_vec),
            }
        };
        out.push(match item {
            Ok(line) => {
                assert!(!line.is_empty() && line.len() <= max, "bad line {line:?}");
                assert!(!line.contains(&b'\n'));
                Item::Line(line)
            }
            Err(LineError::TooLong { len, limit }) => {
                assert_eq!(limit, max);
                assert!(len > max, "TooLong with len {len} <= limit {max}");
                Item::TooLong
            }
            Err(LineError::NotUtf8 { valid_up_to }) => {
                assert!(utf8, "NotUtf8 from next_line");
                let _ = valid_up_to;
                Item::NotUtf8
            }
        });
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(first & 0x3f) + 1;
    let utf8 = first & 0x40 != 0;
    let mut framer = LineFramer::new(max);
    let mut stream = Vec::new();
    let mut got = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let take = usize::from(len).min(tail.len());
        let (chunk, tail) = tail.split_at(take);
        rest = tail;
        framer.push(chunk);
        stream.extend_from_slice(chunk);
        drain(&mut framer, utf8, max, &mut got);
        assert!(
            framer.buffered() <= max + 1,
            "{} bytes buffered with a cap of {max}",
            framer.buffered()
        );
    }
    assert_eq!(got, model(&stream, max, utf8), "stream {stream:?}");

    // Round trip: the lines that fit, re-encoded as a sender would, come out unchanged.
    let lines: Vec<Vec<u8>> = got
        .into_iter()
        .filter_map(|i| match i {
            Item::Line(l) => Some(l),
            _ => None,
        })
        .collect();
    let mut wire = Vec::new();
    for line in &lines {
        wire.extend_from_slice(line);
        wire.extend_from_slice(b"\r\n");
    }
    let mut framer = LineFramer::new(max);
    framer.push(&wire);
    let mut again = Vec::new();
    drain(&mut framer, false, max, &mut again);
    let again: Vec<Vec<u8>> = again
        .into_iter()
        .map(|i| match i {
            Item::Line(l) => l,
            other => panic!("re-encoded line gave {other:?}"),
        })
        .collect();
    assert_eq!(again, lines);
});
