//! The client side of a signed mailbox registration, sans-IO: [`KeyRegistration`] says what to
//! send and checks what comes back (the server name in the challenge, then the registration).

use std::fmt;

use thiserror::Error;

use super::{NodeId, Reply, Request};
use crate::key::{PublicKey, SigningKey};
use crate::signal::RegisterProof;

/// Why a signed registration failed on the client's side.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegisterKeyError {
    /// The challenge names another server than the one dialed: signing it would hand that
    /// server a proof it could replay elsewhere, so the client refuses.
    #[error(
        "the server's challenge names {got:?}, not the server dialed ({expected:?}); not signing"
    )]
    WrongServer {
        /// The name the client dialed.
        expected: String,
        /// The name in the challenge.
        got: String,
    },
    /// The server refused (`ERROR <reason>`).
    #[error("the mailbox server refused the registration: {0}")]
    Refused(String),
    /// The server registered another mailbox than the key's.
    #[error("the server registered mailbox {got}, not {expected} (the key's)")]
    WrongMailbox {
        /// The key's mailbox name.
        expected: NodeId,
        /// What the server said.
        got: NodeId,
    },
    /// A reply that does not belong in this exchange.
    #[error("unexpected reply {reply:?} while {waiting}")]
    Unexpected {
        /// The reply, as text.
        reply: String,
        /// What the client waited for.
        waiting: &'static str,
    },
}

/// What to do after a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterStep {
    /// Send this request next.
    Send(Request),
    /// Registered: the connection now owns `node_id` (`created`: a new mailbox).
    Registered {
        /// The mailbox (the key's [`PublicKey::mailbox_name`]).
        node_id: NodeId,
        /// True if the server just created it.
        created: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Challenge,
    Proof,
    Done,
}

/// A signed registration with a mailbox server, as a small state machine the node's
/// connection feeds: send [`first_request`](Self::first_request) (`CHALLENGE`), then hand every
/// reply to [`handle_reply`](Self::handle_reply) until it says
/// [`RegisterStep::Registered`]. `MSG` pushes are not part of it: hand only the other replies.
///
/// `server` is the name the node expects in the challenge: the server's `--name`, or else
/// the address the node dialed as `ip:port` (`[v6]:port` for IPv6), which is what the server
/// uses when it has no name.
///
/// ```
/// use wire::key::{PublicKey, SigningKey};
/// use wire::mailbox::{KeyRegistration, RegisterStep, Reply, Request};
/// use wire::overlay::Nonce;
/// use wire::signal::RegisterChallenge;
///
/// let secret = SigningKey::from_bytes(&[5; 32]);
/// let mut reg = KeyRegistration::new(&secret, "[2001:db8::2]:8090");
/// assert_eq!(reg.first_request().to_string(), "CHALLENGE");
/// let challenge = RegisterChallenge { server: "[2001:db8::2]:8090".into(), nonce: Nonce([7; 32]) };
/// let RegisterStep::Send(proof) = reg.handle_reply(&Reply::Challenge(challenge))? else { panic!() };
/// assert!(proof.to_string().starts_with("REGISTER_KEY "));
/// let node_id = PublicKey::of(&secret).mailbox_name();
/// let done = reg.handle_reply(&Reply::Registered { node_id: node_id.clone(), created: true })?;
/// assert_eq!(done, RegisterStep::Registered { node_id, created: true });
/// # Ok::<(), wire::mailbox::RegisterKeyError>(())
/// ```
pub struct KeyRegistration {
    secret: SigningKey,
    server: String,
    phase: Phase,
}

impl fmt::Debug for KeyRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRegistration")
            .field("key", &PublicKey::of(&self.secret))
            .field("server", &self.server)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl KeyRegistration {
    /// A registration of `secret`'s key with the server named `server`.
    pub fn new(secret: &SigningKey, server: impl Into<String>) -> KeyRegistration {
        KeyRegistration {
            secret: secret.clone(),
            server: server.into(),
            phase: Phase::Challenge,
        }
    }

    /// The mailbox the key owns.
    pub fn node_id(&self) -> NodeId {
        PublicKey::of(&self.secret).mailbox_name()
    }

    /// The first line to send: `CHALLENGE`.
    pub fn first_request(&self) -> Request {
        Request::Challenge
    }

    /// A reply from the server (not a `MSG` push): what to send next, or the outcome.
    pub fn handle_reply(&mut self, reply: &Reply) -> Result<RegisterStep, RegisterKeyError> {
        match (self.phase, reply) {
            (Phase::Challenge | Phase::Proof, Reply::Error(reason)) => {
                self.phase = Phase::Done;
                Err(RegisterKeyError::Refused(reason.clone()))
            }
            (Phase::Challenge, Reply::Challenge(challenge)) => {
                if challenge.server != self.server {
                    self.phase = Phase::Done;
                    return Err(RegisterKeyError::WrongServer {
                        expected: self.server.clone(),
                        got: challenge.server.clone(),
                    });
                }
                self.phase = Phase::Proof;
                let proof = RegisterProof::sign(&self.secret, challenge);
                Ok(RegisterStep::Send(Request::RegisterKey(proof)))
            }
            (Phase::Proof, Reply::Registered { node_id, created }) => {
                self.phase = Phase::Done;
                let expected = self.node_id();
                if *node_id != expected {
                    return Err(RegisterKeyError::WrongMailbox {
                        expected,
                        got: node_id.clone(),
                    });
                }
                Ok(RegisterStep::Registered {
                    node_id: expected,
                    created: *created,
                })
            }
            (phase, reply) => Err(RegisterKeyError::Unexpected {
                reply: reply.to_string(),
                waiting: match phase {
                    Phase::Challenge => "waiting for CHALLENGE",
                    Phase::Proof => "waiting for OK REGISTERED",
                    Phase::Done => "already done",
                },
            }),
        }
    }
}
