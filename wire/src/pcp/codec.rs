//! Encoding and parsing PCP messages (the layout is drawn in the module docs of
//! [`crate::pcp`]). Lengths are checked before anything is read: the whole datagram against
//! [`MAX_MESSAGE_BYTES`] and 4-byte alignment, the opcode data against what is left, each
//! option against what is left, and the number of options against [`MAX_OPTIONS`] before one
//! is stored.

use std::net::IpAddr;

use super::{
    HEADER_BYTES, MAP_BYTES, MAX_MESSAGE_BYTES, MAX_OPTIONS, MapData, MapRequest, NATPMP_VERSION,
    NONCE_BYTES, Nonce, PcpError, PcpOption, Protocol, Request, Response, ResponseBody, ResultCode,
    VERSION, decode_address, encode_address,
};

const OPCODE_ANNOUNCE: u8 = 0;
const OPCODE_MAP: u8 = 1;
/// The R bit of the opcode byte: set in responses.
const RESPONSE_BIT: u8 = 0x80;
const OPTION_THIRD_PARTY: u8 = 1;
const OPTION_PREFER_FAILURE: u8 = 2;
const OPTION_FILTER: u8 = 3;

impl Request {
    /// The datagram. Reserved fields are zero. A request with more than [`MAX_OPTIONS`]
    /// options, or longer than [`MAX_MESSAGE_BYTES`], is written anyway and refused by
    /// [`Request::parse`] (and by servers).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + MAP_BYTES);
        match self {
            Request::Announce { client } => {
                header(&mut out, OPCODE_ANNOUNCE, [0, 0], 0);
                out.extend_from_slice(&encode_address(*client));
            }
            Request::Map(m) => {
                header(&mut out, OPCODE_MAP, [0, 0], m.lifetime_secs);
                out.extend_from_slice(&encode_address(m.client));
                map_data(&mut out, &m.map);
            }
        }
        out
    }

    /// Parses a request (what a server reads; here for tests, fuzzing and fake servers).
    pub fn parse(bytes: &[u8]) -> Result<Request, PcpError> {
        let opcode = common(bytes, false)?;
        let lifetime_secs = u32_at(bytes, 4);
        let client = address_at(bytes, 8);
        match opcode {
            OPCODE_ANNOUNCE => {
                // No data; options (none are defined for ANNOUNCE) are checked and dropped.
                parse_options(bytes, HEADER_BYTES)?;
                Ok(Request::Announce { client })
            }
            OPCODE_MAP => Ok(Request::Map(MapRequest {
                lifetime_secs,
                client,
                map: parse_map(bytes)?,
            })),
            other => Err(PcpError::Opcode(other)),
        }
    }
}

impl Response {
    /// The datagram (for servers and tests). Reserved fields are zero.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + MAP_BYTES);
        let opcode = match self.body {
            ResponseBody::Announce => OPCODE_ANNOUNCE,
            ResponseBody::Map(_) => OPCODE_MAP,
        };
        header(
            &mut out,
            opcode | RESPONSE_BIT,
            [0, self.result.code()],
            self.lifetime_secs,
        );
        out.extend_from_slice(&self.epoch_secs.to_be_bytes());
        out.extend_from_slice(&[0; 12]);
        if let ResponseBody::Map(m) = &self.body {
            map_data(&mut out, m);
        }
        out
    }

    /// Parses a datagram from the server. A NAT-PMP answer (version 0) is
    /// [`PcpError::NatPmpServer`]: the server speaks NAT-PMP only.
    pub fn parse(bytes: &[u8]) -> Result<Response, PcpError> {
        if bytes.first() == Some(&NATPMP_VERSION) && bytes.len() <= MAX_MESSAGE_BYTES {
            let result_code = match bytes.get(2..4) {
                Some(&[a, b]) => u16::from_be_bytes([a, b]),
                _ => 0,
            };
            return Err(PcpError::NatPmpServer { result_code });
        }
        let opcode = common(bytes, true)?;
        let result = ResultCode::from_code(bytes[3]);
        let lifetime_secs = u32_at(bytes, 4);
        let epoch_secs = u32_at(bytes, 8);
        let body = match opcode {
            OPCODE_ANNOUNCE => {
                parse_options(bytes, HEADER_BYTES)?;
                ResponseBody::Announce
            }
            OPCODE_MAP => ResponseBody::Map(parse_map(bytes)?),
            other => return Err(PcpError::Opcode(other)),
        };
        Ok(Response {
            result,
            lifetime_secs,
            epoch_secs,
            body,
        })
    }
}

/// Version, opcode byte, 2 bytes (reserved, or reserved + result code) and lifetime.
fn header(out: &mut Vec<u8>, opcode: u8, two: [u8; 2], lifetime_secs: u32) {
    out.push(VERSION);
    out.push(opcode);
    out.extend_from_slice(&two);
    out.extend_from_slice(&lifetime_secs.to_be_bytes());
}

/// The MAP data and its options.
fn map_data(out: &mut Vec<u8>, m: &MapData) {
    out.extend_from_slice(&m.nonce.0);
    out.extend_from_slice(&[m.protocol.0, 0, 0, 0]);
    out.extend_from_slice(&m.internal_port.to_be_bytes());
    out.extend_from_slice(&m.external_port.to_be_bytes());
    out.extend_from_slice(&encode_address(m.external_ip));
    options(out, &m.options);
}

fn options(out: &mut Vec<u8>, opts: &[PcpOption]) {
    for o in opts {
        let mut data = Vec::new();
        match o {
            PcpOption::ThirdParty(ip) => data.extend_from_slice(&encode_address(*ip)),
            PcpOption::PreferFailure => {}
            PcpOption::Filter {
                prefix_len,
                remote_port,
                remote,
            } => {
                data.extend_from_slice(&[0, *prefix_len]);
                data.extend_from_slice(&remote_port.to_be_bytes());
                data.extend_from_slice(&encode_address(*remote));
            }
            PcpOption::Other { data: d, .. } => data.extend_from_slice(d),
        }
        out.extend_from_slice(&[o.code(), 0]);
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&data);
        out.resize(out.len() + padding(data.len()), 0);
    }
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// The length rules, the version and the R bit; returns the opcode (7 bits). After this,
/// `bytes` holds at least [`HEADER_BYTES`].
fn common(bytes: &[u8], response: bool) -> Result<u8, PcpError> {
    let len = bytes.len();
    if len > MAX_MESSAGE_BYTES {
        return Err(PcpError::TooLong { len });
    }
    if len < HEADER_BYTES {
        return Err(PcpError::TooShort {
            len,
            what: "the header",
            min: HEADER_BYTES,
        });
    }
    if !len.is_multiple_of(4) {
        return Err(PcpError::Unaligned { len });
    }
    if bytes[0] != VERSION {
        return Err(PcpError::Version(bytes[0]));
    }
    let is_response = bytes[1] & RESPONSE_BIT != 0;
    if is_response != response {
        let name = |r: bool| if r { "response" } else { "request" };
        return Err(PcpError::Direction {
            expected: name(response),
            got: name(is_response),
        });
    }
    Ok(bytes[1] & !RESPONSE_BIT)
}

fn parse_map(bytes: &[u8]) -> Result<MapData, PcpError> {
    let end = HEADER_BYTES + MAP_BYTES;
    if bytes.len() < end {
        return Err(PcpError::TooShort {
            len: bytes.len(),
            what: "a MAP message",
            min: end,
        });
    }
    let d = &bytes[HEADER_BYTES..end];
    let mut nonce = [0; NONCE_BYTES];
    nonce.copy_from_slice(&d[..NONCE_BYTES]);
    Ok(MapData {
        nonce: Nonce(nonce),
        protocol: Protocol(d[12]),
        internal_port: u16_at(d, 16),
        external_port: u16_at(d, 18),
        external_ip: address_at(d, 20),
        options: parse_options(bytes, end)?,
    })
}

/// The options from `start` to the end of `bytes`.
fn parse_options(bytes: &[u8], start: usize) -> Result<Vec<PcpOption>, PcpError> {
    let len = bytes.len();
    let mut at = start;
    let mut out = Vec::new();
    while at < len {
        if out.len() == MAX_OPTIONS {
            return Err(PcpError::TooManyOptions);
        }
        let Some(head) = bytes.get(at..at + 4) else {
            return Err(PcpError::OptionTruncated { code: 0, at, len });
        };
        let code = head[0];
        let data_len = usize::from(u16_at(head, 2));
        let data_start = at + 4;
        let Some(data) = bytes.get(data_start..data_start + data_len) else {
            return Err(PcpError::OptionTruncated { code, at, len });
        };
        let exact = |name: &'static str, expected: usize| {
            if data_len == expected {
                Ok(())
            } else {
                Err(PcpError::OptionLength {
                    name,
                    code,
                    len: data_len,
                    expected,
                })
            }
        };
        let option = match code {
            OPTION_THIRD_PARTY => {
                exact("THIRD_PARTY", 16)?;
                PcpOption::ThirdParty(address_at(data, 0))
            }
            OPTION_PREFER_FAILURE => {
                exact("PREFER_FAILURE", 0)?;
                PcpOption::PreferFailure
            }
            OPTION_FILTER => {
                exact("FILTER", 20)?;
                PcpOption::Filter {
                    prefix_len: data[1],
                    remote_port: u16_at(data, 2),
                    remote: address_at(data, 4),
                }
            }
            code => PcpOption::Other {
                code,
                data: data.to_vec(),
            },
        };
        out.push(option);
        // Padding may be cut short only by the end of the message, which is aligned anyway.
        at = (data_start + data_len + padding(data_len)).min(len);
    }
    Ok(out)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn address_at(b: &[u8], at: usize) -> IpAddr {
    let mut raw = [0; 16];
    raw.copy_from_slice(&b[at..at + 16]);
    decode_address(raw)
}
