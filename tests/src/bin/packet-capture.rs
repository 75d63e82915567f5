//! `packet-capture FILE`: writes every packet seen on every interface of the network namespace
//! it runs in to FILE (each as a u32 big-endian length and the frame's bytes, flushed at once,
//! so a capture killed at any moment holds every packet before), until killed. Prints
//! `capturing` on stderr once the socket is open. For `tests/tests/noise_capture_netns.rs`,
//! which runs it inside a lab router (an `AF_PACKET` socket sees only its own namespace) and
//! searches the frames for lines that must never travel in clear; no tcpdump needed.

use std::error::Error;
use std::fs::File;
use std::io::{Read as _, Write as _};

use socket2::{Domain, Protocol, Socket, Type};

/// `ETH_P_ALL`: every protocol (in network byte order as the socket wants it).
const ETH_P_ALL: u16 = 0x0003;

fn main() -> Result<(), Box<dyn Error>> {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: packet-capture FILE");
        std::process::exit(2);
    };
    let mut socket = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
    )?;
    let mut file = File::create(&path)?;
    eprintln!("capturing");
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = socket.read(&mut buf)?;
        file.write_all(&u32::try_from(n)?.to_be_bytes())?;
        file.write_all(&buf[..n])?;
        file.flush()?;
    }
}
