//! PCP result codes (RFC 6887 §7.4), each with its name and what it means for a client.

use std::fmt;

/// A PCP result code (RFC 6887 §7.4), each with what it means for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultCode {
    /// 0: done.
    Success,
    /// 1: the server does not speak this version.
    UnsuppVersion,
    /// 2: the server's policy refuses this request.
    NotAuthorized,
    /// 3: the request could not be parsed.
    MalformedRequest,
    /// 4: the server does not support this opcode.
    UnsuppOpcode,
    /// 5: a mandatory option the server does not support.
    UnsuppOption,
    /// 6: an option was malformed.
    MalformedOption,
    /// 7: the server cannot reach its own network now.
    NetworkFailure,
    /// 8: the server is out of resources (mappings, ports).
    NoResources,
    /// 9: the protocol cannot be mapped.
    UnsuppProtocol,
    /// 10: this client has used up its quota of mappings.
    UserExQuota,
    /// 11: the suggested external address or port cannot be given (with `PREFER_FAILURE`).
    CannotProvideExternal,
    /// 12: the client address in the header is not the packet's source (a NAT between client
    /// and server).
    AddressMismatch,
    /// 13: too many remote peers (PEER only).
    ExcessiveRemotePeers,
    /// A code RFC 6887 does not define.
    Other(u8),
}

impl ResultCode {
    /// Every code RFC 6887 defines, in order.
    pub const DEFINED: [ResultCode; 14] = [
        ResultCode::Success,
        ResultCode::UnsuppVersion,
        ResultCode::NotAuthorized,
        ResultCode::MalformedRequest,
        ResultCode::UnsuppOpcode,
        ResultCode::UnsuppOption,
        ResultCode::MalformedOption,
        ResultCode::NetworkFailure,
        ResultCode::NoResources,
        ResultCode::UnsuppProtocol,
        ResultCode::UserExQuota,
        ResultCode::CannotProvideExternal,
        ResultCode::AddressMismatch,
        ResultCode::ExcessiveRemotePeers,
    ];

    /// The code's number.
    pub fn code(self) -> u8 {
        match self {
            ResultCode::Other(n) => n,
            // The position in DEFINED is the number (0..=13).
            defined => ResultCode::DEFINED
                .iter()
                .position(|c| *c == defined)
                .and_then(|i| u8::try_from(i).ok())
                .unwrap_or(u8::MAX),
        }
    }

    /// The code of number `n`.
    pub fn from_code(n: u8) -> ResultCode {
        ResultCode::DEFINED
            .get(usize::from(n))
            .copied()
            .unwrap_or(ResultCode::Other(n))
    }

    /// RFC 6887's name, e.g. `NOT_AUTHORIZED`.
    pub fn name(self) -> &'static str {
        match self {
            ResultCode::Success => "SUCCESS",
            ResultCode::UnsuppVersion => "UNSUPP_VERSION",
            ResultCode::NotAuthorized => "NOT_AUTHORIZED",
            ResultCode::MalformedRequest => "MALFORMED_REQUEST",
            ResultCode::UnsuppOpcode => "UNSUPP_OPCODE",
            ResultCode::UnsuppOption => "UNSUPP_OPTION",
            ResultCode::MalformedOption => "MALFORMED_OPTION",
            ResultCode::NetworkFailure => "NETWORK_FAILURE",
            ResultCode::NoResources => "NO_RESOURCES",
            ResultCode::UnsuppProtocol => "UNSUPP_PROTOCOL",
            ResultCode::UserExQuota => "USER_EX_QUOTA",
            ResultCode::CannotProvideExternal => "CANNOT_PROVIDE_EXTERNAL",
            ResultCode::AddressMismatch => "ADDRESS_MISMATCH",
            ResultCode::ExcessiveRemotePeers => "EXCESSIVE_REMOTE_PEERS",
            ResultCode::Other(_) => "unknown result code",
        }
    }

    /// What it means, for a person reading a report.
    pub fn meaning(self) -> &'static str {
        match self {
            ResultCode::Success => "the request was carried out",
            ResultCode::UnsuppVersion => "the server does not speak PCP version 2",
            ResultCode::NotAuthorized => {
                "the server's policy refuses this mapping (or deleting it)"
            }
            ResultCode::MalformedRequest => "the server could not parse the request",
            ResultCode::UnsuppOpcode => "the server does not support this opcode",
            ResultCode::UnsuppOption => "the server does not support a mandatory option sent",
            ResultCode::MalformedOption => "the server found an option malformed",
            ResultCode::NetworkFailure => {
                "the server has no working external network or address now"
            }
            ResultCode::NoResources => "the server is out of mappings or ports",
            ResultCode::UnsuppProtocol => "the server cannot map this protocol",
            ResultCode::UserExQuota => "this client has used up its quota of mappings",
            ResultCode::CannotProvideExternal => {
                "the suggested external address or port cannot be given"
            }
            ResultCode::AddressMismatch => {
                "the client address in the request is not the packet's source address (a NAT \
                 between client and server)"
            }
            ResultCode::ExcessiveRemotePeers => "too many remote peers",
            ResultCode::Other(_) => "a result code RFC 6887 does not define",
        }
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.name(), self.code(), self.meaning())
    }
}
