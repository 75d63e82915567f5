//! The word-level parsing every message shares: a line split into words, and numbers,
//! ports, protocols, times and free text checked against their limits.

use std::fmt::{self, Formatter, Write as _};
use std::net::IpAddr;

use super::fields::{NtpTime, Proto};
use super::{MAX_PREDICTED_PORTS, MAX_TEXT_BYTES, ParseError};

/// Splits a line into words (runs of ASCII spaces or tabs).
pub(super) struct Words<'a> {
    pub(super) command: &'static str,
    pub(super) iter: std::str::SplitAsciiWhitespace<'a>,
}

impl<'a> Words<'a> {
    pub(super) fn new(command: &'static str, rest: &'a str) -> Self {
        Words {
            command,
            iter: rest.split_ascii_whitespace(),
        }
    }

    pub(super) fn next(&mut self, argument: &'static str) -> Result<&'a str, ParseError> {
        self.iter.next().ok_or(ParseError::MissingArgument {
            command: self.command,
            argument,
        })
    }

    pub(super) fn number<T>(
        &mut self,
        argument: &'static str,
        min: u64,
        max: u64,
    ) -> Result<T, ParseError>
    where
        T: TryFrom<u64>,
    {
        let word = self.next(argument)?;
        parse_number(self.command, argument, word, min, max)
    }

    pub(super) fn optional_number<T>(
        &mut self,
        argument: &'static str,
        min: u64,
        max: u64,
    ) -> Result<Option<T>, ParseError>
    where
        T: TryFrom<u64>,
    {
        match self.iter.next() {
            None => Ok(None),
            Some(word) => parse_number(self.command, argument, word, min, max).map(Some),
        }
    }

    pub(super) fn ip(&mut self, argument: &'static str) -> Result<IpAddr, ParseError> {
        let word = self.next(argument)?;
        word.parse().map_err(|_| ParseError::BadAddress {
            command: self.command,
            argument,
            value: word.to_string(),
        })
    }

    pub(super) fn proto(&mut self) -> Result<Proto, ParseError> {
        let word = self.next("proto")?;
        parse_proto(self.command, word)
    }

    pub(super) fn time(&mut self) -> Result<NtpTime, ParseError> {
        let word = self.next("ntp_time")?;
        parse_time(self.command, word)
    }

    pub(super) fn end(mut self) -> Result<(), ParseError> {
        match self.iter.next() {
            None => Ok(()),
            Some(extra) => Err(ParseError::ExtraArgument {
                command: self.command,
                extra: extra.to_string(),
            }),
        }
    }
}

pub(super) fn parse_number<T: TryFrom<u64>>(
    command: &'static str,
    argument: &'static str,
    word: &str,
    min: u64,
    max: u64,
) -> Result<T, ParseError> {
    let bad = || ParseError::BadNumber {
        command,
        argument,
        value: word.to_string(),
        min,
        max,
    };
    // Digits only: Rust's parser would also take a leading '+'.
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = word.parse().map_err(|_| bad())?;
    if n < min || n > max {
        return Err(bad());
    }
    T::try_from(n).map_err(|_| bad())
}

pub(super) fn parse_proto(command: &'static str, word: &str) -> Result<Proto, ParseError> {
    match word {
        "TCP" => Ok(Proto::Tcp),
        "UDP" => Ok(Proto::Udp),
        _ => Err(ParseError::BadProtocol {
            command,
            value: word.to_string(),
        }),
    }
}

pub(super) fn parse_time(command: &'static str, word: &str) -> Result<NtpTime, ParseError> {
    let bad = || ParseError::BadTime {
        command,
        value: word.to_string(),
    };
    // PyP2P sends `[0-9]+(.[0-9]+)?`, and Rust's float Display never writes an exponent.
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(bad());
    }
    word.parse::<f64>()
        .ok()
        .and_then(NtpTime::new)
        .ok_or_else(bad)
}

pub(super) fn parse_port_word(command: &'static str, word: &str) -> Result<u16, ParseError> {
    parse_number(command, "port", word, 1, u64::from(u16::MAX))
}

/// A predicted port, or [`super::RANDOM_PORT`] (0): the candidate's NAT maps ports at
/// random (`CANDIDATE` and `CHALLENGE` only).
pub(super) fn parse_port_or_random(command: &'static str, word: &str) -> Result<u16, ParseError> {
    parse_number(command, "port", word, 0, u64::from(u16::MAX))
}

pub(super) fn check_port_count(command: &'static str, count: usize) -> Result<(), ParseError> {
    if count == 0 || count > MAX_PREDICTED_PORTS {
        return Err(ParseError::PortCount {
            command,
            count,
            max: MAX_PREDICTED_PORTS,
        });
    }
    Ok(())
}

/// Ports up to (not including) a protocol word, then the protocol: `<p1 p2 ...> TCP`.
pub(super) fn ports_then_proto(words: &mut Words<'_>) -> Result<(Vec<u16>, Proto), ParseError> {
    ports_then_proto_from(words, parse_port_word)
}

/// As [`ports_then_proto`], with `port` parsing each port.
pub(super) fn ports_then_proto_from(
    words: &mut Words<'_>,
    port: fn(&'static str, &str) -> Result<u16, ParseError>,
) -> Result<(Vec<u16>, Proto), ParseError> {
    let mut ports = Vec::new();
    loop {
        let word = words.next("proto")?;
        if word.bytes().all(|b| b.is_ascii_digit()) {
            if ports.len() == MAX_PREDICTED_PORTS {
                return Err(ParseError::PortCount {
                    command: words.command,
                    count: ports.len() + 1,
                    max: MAX_PREDICTED_PORTS,
                });
            }
            ports.push(port(words.command, word)?);
        } else {
            let proto = parse_proto(words.command, word)?;
            check_port_count(words.command, ports.len())?;
            return Ok((ports, proto));
        }
    }
}

pub(super) fn check_text(command: &'static str, text: &str) -> Result<(), ParseError> {
    if text.len() > MAX_TEXT_BYTES || text.contains(['\r', '\n']) {
        return Err(ParseError::BadText {
            command,
            len: text.len(),
            max: MAX_TEXT_BYTES,
        });
    }
    Ok(())
}

/// Splits off a command made of one or two fixed words, returning the rest of the line.
pub(super) fn strip_command<'a>(line: &'a str, command: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(command)?;
    if rest.is_empty() || rest.starts_with([' ', '\t']) {
        Some(rest)
    } else {
        None
    }
}

pub(super) fn write_ports(f: &mut Formatter<'_>, ports: &[u16]) -> fmt::Result {
    for (i, port) in ports.iter().enumerate() {
        if i > 0 {
            f.write_char(' ')?;
        }
        write!(f, "{port}")?;
    }
    Ok(())
}

/// The start of an unknown line, short enough to quote in an error.
pub(super) fn first_words(line: &str) -> String {
    let mut end = line.len().min(32);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    line[..end].to_string()
}
