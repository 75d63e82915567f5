//! [`Handshake`]: one side of the Noise XX handshake, fed bytes, giving bytes to send and, at
//! the end, the peer's verified identity and the encrypted line channel.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::lines::SecureLines;
use super::{HandshakeConfig, NoiseKeys, PAYLOAD_BYTES, PAYLOAD_VERSION, Resolver, Role, params};
use wire::frame::{FrameDecoder, FrameError, NOISE_PREAMBLE, encode_frame};
use wire::key::{Context, KeyError, PUBLIC_KEY_BYTES, PublicKey, SIGNATURE_BYTES};

/// Largest handshake message we write (message 2: 32 + 48 + 97 + 16 bytes).
const MAX_WRITTEN: usize = 256;

/// Why a handshake failed. Each says what was expected and what came.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// The whole handshake took longer than its timeout.
    #[error("handshake timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        /// What had not arrived.
        waiting_for: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The peer closed the connection before the handshake finished.
    #[error("peer closed the connection after {received} bytes, waiting for {waiting_for}")]
    Closed {
        /// What had not arrived.
        waiting_for: &'static str,
        /// Bytes received before.
        received: usize,
    },
    /// The peer sent a text line instead of our preamble: a PyP2P node or a node in plain-text
    /// mode.
    #[error("peer speaks plain text, not our encrypted protocol (it sent {start:?})")]
    PlainText {
        /// The start of what it sent (at most 40 bytes, escaped).
        start: String,
    },
    /// The peer sent something else than `\0p2p-nx1`: another protocol, or another version.
    #[error(
        "peer sent {got:?} where the preamble \"\\0p2p-nx1\" belongs (another protocol or version?)"
    )]
    BadPreamble {
        /// What it sent in its place (escaped).
        got: String,
    },
    /// A handshake message is over the cap.
    #[error("handshake message: {0}")]
    Frame(#[from] FrameError),
    /// A handshake message did not decrypt or was malformed (garbled, cut, or not for this
    /// session).
    #[error("handshake message {message} refused by Noise: {detail}")]
    Noise {
        /// Which message (1, 2 or 3).
        message: u8,
        /// What snow said.
        detail: String,
    },
    /// The payload is not `01 <key> <signature>` (or message 1 carries one).
    #[error("bad handshake payload in message {message}: {detail}")]
    BadPayload {
        /// Which message.
        message: u8,
        /// What is wrong.
        detail: String,
    },
    /// The identity key in the payload is not a usable Ed25519 key.
    #[error("peer's identity: {0}")]
    BadIdentity(KeyError),
    /// The identity key did not sign the Noise static key of this session: someone replays
    /// another node's payload (a man in the middle).
    #[error(
        "peer's identity {key} did not sign the Noise key of this connection (a man in the middle?)"
    )]
    StaticNotSigned {
        /// The identity the payload claims.
        key: PublicKey,
    },
    /// The peer proved another identity than the one we meant to reach.
    #[error("peer is key {got}, not the key {expected} we dialed (node id {} instead of {})", got.node_id(), expected.node_id())]
    WrongPeer {
        /// The key we expected (from its UNL).
        expected: PublicKey,
        /// The key it proved.
        got: PublicKey,
    },
}

/// The end of a successful handshake.
pub struct Established {
    /// The peer's identity key, verified.
    pub peer: PublicKey,
    /// The encrypted line channel, to use in place of the plain line framer.
    pub lines: SecureLines,
    /// Bytes received after the last handshake message (the first encrypted frames): push
    /// them into `lines`.
    pub leftover: Vec<u8>,
}

impl fmt::Debug for Established {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Established")
            .field("peer", &self.peer)
            .field("leftover", &self.leftover.len())
            .finish_non_exhaustive()
    }
}

/// What the handshake asks the driver to do.
#[derive(Debug)]
pub enum HandshakeOutput {
    /// Write these bytes to the peer (in order, before anything from the channel).
    Send(Vec<u8>),
    /// Done: the peer is who it says (and who we expected, if we did).
    Done(Box<Established>),
    /// Failed: close the connection, with this reason.
    Failed(HandshakeError),
}

/// One side of a handshake. Sans-IO: bytes and time go in, [`HandshakeOutput`]s come out.
///
/// ```
/// use std::time::Instant;
/// use node::identity::Identity;
/// use node::secure::{Handshake, HandshakeConfig, HandshakeOutput, NoiseKeys, Role};
///
/// let (alice, bob) = (Identity::from_secret_bytes(&[1; 32]), Identity::from_secret_bytes(&[2; 32]));
/// let now = Instant::now();
/// let config = HandshakeConfig::default();
/// let mut a = Handshake::new(now, Role::Initiator, &NoiseKeys::new(&alice, [3; 32]), Some(bob.key()), config, [4; 32]);
/// let mut b = Handshake::new(now, Role::Responder, &NoiseKeys::new(&bob, [5; 32]), None, config, [6; 32]);
/// // Shuttle bytes until both are done.
/// let (mut a_done, mut b_done) = (None, None);
/// for _ in 0..3 {
///     while let Some(out) = a.poll_output() {
///         match out {
///             HandshakeOutput::Send(bytes) => b.handle_bytes(now, &bytes),
///             HandshakeOutput::Done(e) => a_done = Some(e.peer),
///             HandshakeOutput::Failed(e) => panic!("{e}"),
///         }
///     }
///     while let Some(out) = b.poll_output() {
///         match out {
///             HandshakeOutput::Send(bytes) => a.handle_bytes(now, &bytes),
///             HandshakeOutput::Done(e) => b_done = Some(e.peer),
///             HandshakeOutput::Failed(e) => panic!("{e}"),
///         }
///     }
/// }
/// assert_eq!(a_done, Some(bob.key()));
/// assert_eq!(b_done, Some(alice.key()));
/// ```
pub struct Handshake {
    role: Role,
    noise: Option<snow::HandshakeState>,
    payload: [u8; PAYLOAD_BYTES],
    expected: Option<PublicKey>,
    config: HandshakeConfig,
    deadline: Instant,
    /// Bytes of the peer's preamble seen so far.
    preamble_seen: usize,
    frames: FrameDecoder,
    /// The number of the next message we read (1, 2 or 3).
    next_read: u8,
    received: usize,
    out: VecDeque<HandshakeOutput>,
    finished: bool,
}

impl Handshake {
    /// Starts a handshake at `now`. `expected`: the peer's key when we know whom we meant to
    /// reach (a dialer with a v3 UNL, or the side of a reverse/relayed connection that holds
    /// the peer's signed request); `seed`: 32 random bytes for the ephemeral key. An initiator
    /// has its first bytes ready at once.
    pub fn new(
        now: Instant,
        role: Role,
        keys: &NoiseKeys,
        expected: Option<PublicKey>,
        config: HandshakeConfig,
        seed: [u8; 32],
    ) -> Handshake {
        let builder = snow::Builder::with_resolver(params(), Box::new(Resolver { seed }))
            .prologue(&NOISE_PREAMBLE)
            .and_then(|b| b.local_private_key(&keys.static_private));
        let noise = builder.and_then(|b| match role {
            Role::Initiator => b.build_initiator(),
            Role::Responder => b.build_responder(),
        });
        let mut hs = Handshake {
            role,
            noise: None,
            payload: keys.payload,
            expected,
            config,
            deadline: now + config.timeout,
            preamble_seen: 0,
            frames: FrameDecoder::new(config.max_message),
            next_read: if role == Role::Initiator { 2 } else { 1 },
            received: 0,
            out: VecDeque::new(),
            finished: false,
        };
        match noise {
            Ok(noise) => {
                hs.noise = Some(noise);
                if role == Role::Initiator {
                    hs.write(1, &[]);
                }
            }
            Err(e) => hs.fail(HandshakeError::Noise {
                message: 1,
                detail: e.to_string(),
            }),
        }
        hs
    }

    /// Which side this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether it ended (done or failed).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Bytes from the peer.
    pub fn handle_bytes(&mut self, _now: Instant, mut bytes: &[u8]) {
        if self.finished {
            return;
        }
        self.received += bytes.len();
        if self.preamble_seen < NOISE_PREAMBLE.len() {
            let n = bytes.len().min(NOISE_PREAMBLE.len() - self.preamble_seen);
            let want = &NOISE_PREAMBLE[self.preamble_seen..self.preamble_seen + n];
            if bytes[..n] != *want {
                let start = &bytes[..bytes.len().min(40)];
                let error = if self.preamble_seen == 0 && bytes[0] != 0 {
                    HandshakeError::PlainText {
                        start: start.escape_ascii().to_string(),
                    }
                } else {
                    HandshakeError::BadPreamble {
                        got: start.escape_ascii().to_string(),
                    }
                };
                self.fail(error);
                return;
            }
            self.preamble_seen += n;
            bytes = &bytes[n..];
        }
        self.frames.push(bytes);
        while !self.finished {
            let message = match self.frames.next_frame() {
                None => return,
                Some(Err(e)) => {
                    self.fail(e.into());
                    return;
                }
                Some(Ok(frame)) => frame.to_vec(),
            };
            self.read(&message);
        }
    }

    /// The peer closed its side before the handshake finished.
    pub fn handle_eof(&mut self, _now: Instant) {
        if !self.finished {
            self.fail(HandshakeError::Closed {
                waiting_for: self.waiting_for(),
                received: self.received,
            });
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next (`None` once
    /// finished).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.finished).then_some(self.deadline)
    }

    /// Time passed: fails the handshake once its deadline is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.finished && now >= self.deadline {
            self.fail(HandshakeError::Timeout {
                waiting_for: self.waiting_for(),
                after: self.config.timeout,
            });
        }
    }

    /// The next thing to do, in order; `None` when there is nothing.
    pub fn poll_output(&mut self) -> Option<HandshakeOutput> {
        self.out.pop_front()
    }

    fn waiting_for(&self) -> &'static str {
        if self.preamble_seen < NOISE_PREAMBLE.len() {
            return "the peer's preamble";
        }
        match self.next_read {
            1 => "handshake message 1",
            2 => "handshake message 2",
            _ => "handshake message 3",
        }
    }

    fn fail(&mut self, error: HandshakeError) {
        self.finished = true;
        self.noise = None;
        self.frames = FrameDecoder::new(0);
        self.out.push_back(HandshakeOutput::Failed(error));
    }

    /// Writes our message `number` (1 carries no payload; 2 and 3 carry ours).
    fn write(&mut self, number: u8, payload: &[u8]) {
        let Some(noise) = self.noise.as_mut() else {
            return;
        };
        let mut message = [0u8; MAX_WRITTEN];
        match noise.write_message(payload, &mut message) {
            Ok(len) => {
                let mut bytes = Vec::with_capacity(NOISE_PREAMBLE.len() + 2 + len);
                if number <= 2 {
                    bytes.extend_from_slice(&NOISE_PREAMBLE);
                }
                if let Err(e) = encode_frame(&message[..len], &mut bytes) {
                    self.fail(e.into());
                    return;
                }
                self.out.push_back(HandshakeOutput::Send(bytes));
            }
            Err(e) => self.fail(HandshakeError::Noise {
                message: number,
                detail: e.to_string(),
            }),
        }
    }

    fn read(&mut self, message: &[u8]) {
        let number = self.next_read;
        let Some(noise) = self.noise.as_mut() else {
            return;
        };
        let mut payload = [0u8; MAX_WRITTEN];
        let len = match noise.read_message(message, &mut payload) {
            Ok(len) => len,
            Err(e) => {
                let detail = match e {
                    snow::Error::Decrypt => {
                        "authentication failed (garbled, or not for this session)".to_owned()
                    }
                    snow::Error::Input => format!("malformed ({} bytes)", message.len()),
                    other => other.to_string(),
                };
                self.fail(HandshakeError::Noise {
                    message: number,
                    detail,
                });
                return;
            }
        };
        if number == 1 {
            if len != 0 {
                self.fail(HandshakeError::BadPayload {
                    message: 1,
                    detail: format!("{len} bytes of payload, expected none"),
                });
                return;
            }
            self.next_read = 3;
            let ours = self.payload;
            self.write(2, &ours);
            return;
        }
        let remote_static = noise.get_remote_static().map(<[u8]>::to_vec);
        match check_payload(
            number,
            &payload[..len],
            remote_static.as_deref(),
            self.expected,
        ) {
            Ok(peer) => {
                if number == 2 {
                    let ours = self.payload;
                    self.write(3, &ours);
                }
                self.finish(peer);
            }
            Err(e) => self.fail(e),
        }
    }

    fn finish(&mut self, peer: PublicKey) {
        let Some(noise) = self.noise.take() else {
            return;
        };
        match noise.into_transport_mode() {
            Ok(transport) => {
                self.finished = true;
                let leftover = self.frames.take_buffered();
                self.out
                    .push_back(HandshakeOutput::Done(Box::new(Established {
                        peer,
                        lines: SecureLines::new(transport, self.config.max_line),
                        leftover,
                    })));
            }
            Err(e) => self.fail(HandshakeError::Noise {
                message: self.next_read,
                detail: e.to_string(),
            }),
        }
    }
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("expected", &self.expected)
            .field("next_read", &self.next_read)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// Checks a payload: version, identity key, its signature over the static key the handshake
/// proved, and that it is the key we expected.
fn check_payload(
    message: u8,
    payload: &[u8],
    remote_static: Option<&[u8]>,
    expected: Option<PublicKey>,
) -> Result<PublicKey, HandshakeError> {
    let bad = |detail: String| HandshakeError::BadPayload { message, detail };
    if payload.len() != PAYLOAD_BYTES {
        return Err(bad(format!(
            "{} bytes, expected {PAYLOAD_BYTES}",
            payload.len()
        )));
    }
    if payload[0] != PAYLOAD_VERSION {
        return Err(bad(format!(
            "version {}, expected {PAYLOAD_VERSION}",
            payload[0]
        )));
    }
    let mut key_bytes = [0u8; PUBLIC_KEY_BYTES];
    key_bytes.copy_from_slice(&payload[1..=PUBLIC_KEY_BYTES]);
    let key = PublicKey::from_bytes(&key_bytes).map_err(HandshakeError::BadIdentity)?;
    let mut signature = [0u8; SIGNATURE_BYTES];
    signature.copy_from_slice(&payload[1 + PUBLIC_KEY_BYTES..]);
    let remote_static =
        remote_static.ok_or_else(|| bad("no static key in the handshake".into()))?;
    key.verify(Context::NoiseStatic, remote_static, &signature)
        .map_err(|_| HandshakeError::StaticNotSigned { key })?;
    match expected {
        Some(expected) if expected != key => Err(HandshakeError::WrongPeer { expected, got: key }),
        _ => Ok(key),
    }
}
