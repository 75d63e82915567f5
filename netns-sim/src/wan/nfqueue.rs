//! A small NFQUEUE client: netfilter's queue subsystem spoken over a raw netlink socket.
//!
//! Why our own: the `nfq` crate (0.2, MIT/Apache, pure netlink) has the right idea but hides its
//! socket, so a program cannot wait for "a packet or the next release time" without polling; the
//! `libnetfilter_queue` bindings need the C library and `unsafe`. What the WAN stage needs is small:
//! bind queues with metadata-only copies, read packet ids, send (batch) verdicts. `socket2` opens
//! the netlink socket without `unsafe` in this crate; the socket is shared by a reader thread
//! (blocking `recv`) and the scheduler (verdicts), which netlink allows.
//!
//! Wire format (all netlink headers in host byte order, netfilter payloads big-endian):
//! `nlmsghdr { len: u32, type: u16, flags: u16, seq: u32, pid: u32 }`, then
//! `nfgenmsg { family: u8, version: u8, res_id: be16 }` (`res_id` = the queue number), then
//! attributes `{ len: u16, type: u16, value, padding to 4 bytes }`.

use std::io::Read as _;

use socket2::{Domain, Protocol, Socket, Type};

const AF_NETLINK: i32 = 16;
const NETLINK_NETFILTER: i32 = 12;

const NLMSG_HDRLEN: usize = 16;
const NFGEN_HDRLEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

/// `NFNL_SUBSYS_QUEUE << 8`.
const SUBSYS_QUEUE: u16 = 3 << 8;
const MSG_PACKET: u16 = SUBSYS_QUEUE;
const MSG_VERDICT: u16 = SUBSYS_QUEUE | 1;
const MSG_CONFIG: u16 = SUBSYS_QUEUE | 2;
const MSG_VERDICT_BATCH: u16 = SUBSYS_QUEUE | 3;

const CFG_CMD: u16 = 1;
const CFG_PARAMS: u16 = 2;
const CFG_QUEUE_MAXLEN: u16 = 3;
const CMD_BIND: u8 = 1;
const COPY_META: u8 = 1;
const ATTR_PACKET_HDR: u16 = 1;
const ATTR_VERDICT_HDR: u16 = 2;
const ATTR_TYPE_MASK: u16 = 0x3fff;

/// `NF_DROP` and `NF_ACCEPT`.
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

const ENOBUFS: i32 = 105;

/// Errors from the queue socket.
#[derive(Debug, thiserror::Error)]
pub enum NfqueueError {
    /// A socket call failed.
    #[error("nfqueue {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The kernel refused a configuration request.
    #[error("nfqueue: the kernel refused to {what} queue {queue}: {source}")]
    Refused {
        /// What was asked.
        what: &'static str,
        /// The queue number.
        queue: u16,
        /// The errno the kernel answered.
        source: std::io::Error,
    },
    /// A message from the kernel was too short or inconsistent.
    #[error("nfqueue: malformed netlink message: {0}")]
    Malformed(String),
}

/// What a verdict does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it continue through the netfilter hooks.
    Accept,
    /// Drop it.
    Drop,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
        }
    }
}

/// One queued packet: which queue, and the id to give a verdict for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedPacket {
    /// The queue number (iptables `--queue-num`).
    pub queue: u16,
    /// The kernel's packet id within that queue (increasing).
    pub id: u32,
}

/// What one `recv` brought.
#[derive(Debug, Default)]
pub struct Received {
    /// Packets, in the kernel's order.
    pub packets: Vec<QueuedPacket>,
    /// Errors the kernel reported for earlier verdicts (errno values).
    pub errors: Vec<i32>,
    /// The socket buffer overflowed: the kernel dropped packets it could not deliver.
    pub overrun: bool,
}

/// A netlink socket bound to one or more netfilter queues.
#[derive(Debug)]
pub struct NfQueue {
    sock: Socket,
    seq: std::sync::atomic::AtomicU32,
}

impl NfQueue {
    /// Opens a netfilter netlink socket (needs `CAP_NET_ADMIN` in the current namespace).
    pub fn open() -> Result<NfQueue, NfqueueError> {
        let sock = Socket::new(
            Domain::from(AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(NETLINK_NETFILTER)),
        )
        .map_err(|source| NfqueueError::Io {
            what: "open a netlink socket",
            source,
        })?;
        // Room for bursts: a few thousand metadata-only packet messages.
        let _ = sock.set_recv_buffer_size(8 << 20);
        Ok(NfQueue {
            sock,
            seq: std::sync::atomic::AtomicU32::new(1),
        })
    }

    /// Binds queue `queue`: metadata-only copies (the stage never reads payloads) and room for
    /// `max_len` packets held at once (beyond that the kernel drops new packets, like a full
    /// router buffer). Call before any packet arrives (before the iptables rule exists).
    pub fn bind(&self, queue: u16, max_len: u32) -> Result<(), NfqueueError> {
        self.config(queue, "bind", CFG_CMD, &[CMD_BIND, 0, 0, 0])?;
        let mut params = [0u8; 5];
        params[4] = COPY_META;
        self.config(queue, "set the copy mode of", CFG_PARAMS, &params)?;
        self.config(
            queue,
            "set the length of",
            CFG_QUEUE_MAXLEN,
            &max_len.to_be_bytes(),
        )
    }

    fn config(
        &self,
        queue: u16,
        what: &'static str,
        attr: u16,
        value: &[u8],
    ) -> Result<(), NfqueueError> {
        let seq = self.next_seq();
        let msg = message(
            MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            queue,
            attr,
            value,
        );
        self.send(&msg)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = (&self.sock)
                .read(&mut buf)
                .map_err(|source| NfqueueError::Io {
                    what: "read an acknowledgement",
                    source,
                })?;
            for m in messages(&buf[..n])? {
                if m.kind == NLMSG_ERROR && m.seq == seq {
                    return match error_code(m.body)? {
                        0 => Ok(()),
                        errno => Err(NfqueueError::Refused {
                            what,
                            queue,
                            source: std::io::Error::from_raw_os_error(errno),
                        }),
                    };
                }
            }
        }
    }

    fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn send(&self, msg: &[u8]) -> Result<(), NfqueueError> {
        self.sock
            .send(msg)
            .map(|_| ())
            .map_err(|source| NfqueueError::Io {
                what: "send",
                source,
            })
    }

    /// Gives `verdict` for one packet.
    pub fn verdict(&self, p: QueuedPacket, verdict: Verdict) -> Result<(), NfqueueError> {
        self.send(&verdict_message(MSG_VERDICT, self.next_seq(), p, verdict))
    }

    /// Gives `verdict` for every packet of `p.queue` still held with an id up to `p.id`.
    pub fn verdict_batch(&self, p: QueuedPacket, verdict: Verdict) -> Result<(), NfqueueError> {
        self.send(&verdict_message(
            MSG_VERDICT_BATCH,
            self.next_seq(),
            p,
            verdict,
        ))
    }

    /// Blocks until the kernel sends something, then also takes whatever else is already
    /// waiting (up to `max_more` more messages, without blocking): one wake-up per burst, not
    /// per packet. Returns the packets and errors in them.
    pub fn recv(&self, buf: &mut [u8], max_more: usize) -> Result<Received, NfqueueError> {
        let mut out = Received::default();
        self.recv_one(buf, &mut out)?;
        if max_more > 0 {
            self.set_nonblocking(true)?;
            for _ in 0..max_more {
                match self.recv_one(buf, &mut out) {
                    Ok(()) => {}
                    Err(NfqueueError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::WouldBlock =>
                    {
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            self.set_nonblocking(false)?;
        }
        Ok(out)
    }

    fn set_nonblocking(&self, on: bool) -> Result<(), NfqueueError> {
        self.sock
            .set_nonblocking(on)
            .map_err(|source| NfqueueError::Io {
                what: "switch blocking mode",
                source,
            })
    }

    fn recv_one(&self, buf: &mut [u8], out: &mut Received) -> Result<(), NfqueueError> {
        let n = match (&self.sock).read(buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(ENOBUFS) => {
                out.overrun = true;
                return Ok(());
            }
            Err(source) => {
                return Err(NfqueueError::Io {
                    what: "receive",
                    source,
                });
            }
        };
        for m in messages(&buf[..n])? {
            match m.kind {
                MSG_PACKET => out.packets.push(QueuedPacket {
                    queue: m.queue,
                    id: packet_id(m.attrs)?,
                }),
                NLMSG_ERROR => match error_code(m.body)? {
                    0 => {}
                    errno => out.errors.push(errno),
                },
                _ => {}
            }
        }
        Ok(())
    }
}

/// One netlink message, split into its parts.
struct Msg<'a> {
    kind: u16,
    seq: u32,
    /// Everything after the netlink header.
    body: &'a [u8],
    /// `nfgenmsg`'s `res_id` (only meaningful for netfilter messages).
    queue: u16,
    /// The attributes after the nfgenmsg header (empty for non-netfilter messages).
    attrs: &'a [u8],
}

fn messages(mut buf: &[u8]) -> Result<Vec<Msg<'_>>, NfqueueError> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(NfqueueError::Malformed(format!(
                "message length {len} with {} bytes left",
                buf.len()
            )));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let body = &buf[NLMSG_HDRLEN..len];
        let (queue, attrs) = if kind >= 16 && body.len() >= NFGEN_HDRLEN {
            (
                u16::from_be_bytes([body[2], body[3]]),
                &body[NFGEN_HDRLEN..],
            )
        } else {
            (0, &[][..])
        };
        if kind != NLMSG_DONE {
            out.push(Msg {
                kind,
                seq,
                body,
                queue,
                attrs,
            });
        }
        buf = &buf[align(len).min(buf.len())..];
    }
    Ok(out)
}

fn error_code(body: &[u8]) -> Result<i32, NfqueueError> {
    let b: [u8; 4] = body
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| NfqueueError::Malformed("short NLMSG_ERROR".into()))?;
    Ok(-i32::from_ne_bytes(b))
}

fn packet_id(mut attrs: &[u8]) -> Result<u32, NfqueueError> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & ATTR_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            break;
        }
        if kind == ATTR_PACKET_HDR && len >= 8 {
            return Ok(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    Err(NfqueueError::Malformed(
        "packet message without a packet header".into(),
    ))
}

const fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// A netfilter-queue message with one attribute.
fn message(kind: u16, flags: u16, seq: u32, queue: u16, attr: u16, value: &[u8]) -> Vec<u8> {
    let attr_len = 4 + value.len();
    let total = NLMSG_HDRLEN + NFGEN_HDRLEN + align(attr_len);
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, the queue number.
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&queue.to_be_bytes());
    m.extend_from_slice(&u16::try_from(attr_len).unwrap_or(u16::MAX).to_ne_bytes());
    m.extend_from_slice(&attr.to_ne_bytes());
    m.extend_from_slice(value);
    m.resize(total, 0);
    m
}

fn verdict_message(kind: u16, seq: u32, p: QueuedPacket, verdict: Verdict) -> Vec<u8> {
    let mut hdr = [0u8; 8];
    hdr[..4].copy_from_slice(&verdict.code().to_be_bytes());
    hdr[4..].copy_from_slice(&p.id.to_be_bytes());
    message(kind, NLM_F_REQUEST, seq, p.queue, ATTR_VERDICT_HDR, &hdr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_message_layout() {
        let m = verdict_message(
            MSG_VERDICT_BATCH,
            7,
            QueuedPacket {
                queue: 3,
                id: 0x0102_0304,
            },
            Verdict::Accept,
        );
        assert_eq!(m.len(), 16 + 4 + 12);
        assert_eq!(u32::from_ne_bytes(m[..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0303);
        assert_eq!(&m[18..20], &[0, 3]);
        assert_eq!(u16::from_ne_bytes([m[20], m[21]]), 12);
        assert_eq!(&m[24..32], &[0, 0, 0, 1, 1, 2, 3, 4]);
    }

    #[test]
    fn parses_packet_messages_and_errors() {
        // A packet message: nfgenmsg for queue 9, a packet header attribute with id 42.
        let mut pkt = message(
            MSG_PACKET,
            0,
            0,
            9,
            ATTR_PACKET_HDR,
            &[0, 0, 0, 42, 8, 0, 1],
        );
        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&[0; 10]);
        err.extend_from_slice(&(-2i32).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        pkt.extend_from_slice(&err);
        let msgs = messages(&pkt).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].kind, msgs[0].queue), (MSG_PACKET, 9));
        assert_eq!(packet_id(msgs[0].attrs).unwrap(), 42);
        assert_eq!(error_code(msgs[1].body).unwrap(), 2);
        assert!(messages(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
