//! `hostile-peer`: the attacker and victim clients of the netns hostile tests
//! (`tests/tests/hostile_netns.rs`), run inside lab hosts.
//!
//! ```text
//! hostile-peer hold SERVER N LINE      open N connections, send LINE on each, print the first
//!                                      reply of each (`reply <i> <line>` or `reply <i> CLOSED`),
//!                                      print `holding`, then keep them open until killed
//! hostile-peer ask SERVER N LINE       N fresh connections one after the other, each sends LINE
//!                                      and reads a reply; prints `ok <us> <reply>` or
//!                                      `fail <error>` each, then `p50_us=<n> max_us=<n>`
//! hostile-peer get SERVER TARGET [HEADER]
//!                                      one HTTP GET; prints the status code, then the body
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(3);

fn connect(server: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&server, TIMEOUT)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends `line` and reads one reply line (without its terminator).
fn ask(stream: &TcpStream, line: &str) -> std::io::Result<String> {
    let mut w = stream;
    w.write_all(format!("{line}\r\n").as_bytes())?;
    let mut reply = String::new();
    if BufReader::new(stream).read_line(&mut reply)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        ));
    }
    Ok(reply.trim_end().to_owned())
}

fn hold(server: SocketAddr, n: usize, line: &str) {
    let mut held = Vec::new();
    for i in 0..n {
        match connect(server) {
            Ok(s) => {
                match ask(&s, line) {
                    Ok(reply) => println!("reply {i} {reply}"),
                    Err(_) => println!("reply {i} CLOSED"),
                }
                held.push(s);
            }
            Err(e) => println!("reply {i} CONNECT-FAILED {e}"),
        }
    }
    println!("holding");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_hours(1));
    }
}

fn ask_many(server: SocketAddr, n: usize, line: &str) {
    let mut samples = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        match connect(server).and_then(|s| ask(&s, line)) {
            Ok(reply) => {
                let us = t.elapsed().as_micros();
                samples.push(us);
                println!("ok {us} {reply}");
            }
            Err(e) => println!("fail {e}"),
        }
    }
    samples.sort_unstable();
    let p50 = samples.get(samples.len() / 2).copied().unwrap_or(0);
    let max = samples.last().copied().unwrap_or(0);
    println!("p50_us={p50} max_us={max}");
}

fn get(server: SocketAddr, target: &str, header: Option<&str>) -> std::io::Result<()> {
    let mut s = connect(server)?;
    let extra = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    write!(s, "GET {target} HTTP/1.1\r\nHost: {server}\r\n{extra}\r\n")?;
    let mut all = Vec::new();
    s.read_to_end(&mut all)?;
    let text = String::from_utf8_lossy(&all);
    let status = text.split(' ').nth(1).unwrap_or("?");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    println!("{status}");
    println!("{body}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = args.get(1).and_then(|s| s.parse::<SocketAddr>().ok());
    let count = args.get(2).and_then(|s| s.parse::<usize>().ok());
    match (args.first().map(String::as_str), server) {
        (Some("hold"), Some(server)) if count.is_some() && args.len() == 4 => {
            hold(server, count.unwrap_or(0), &args[3]);
            ExitCode::SUCCESS
        }
        (Some("ask"), Some(server)) if count.is_some() && args.len() == 4 => {
            ask_many(server, count.unwrap_or(0), &args[3]);
            ExitCode::SUCCESS
        }
        (Some("get"), Some(server)) if (3..=4).contains(&args.len()) => {
            match get(server, &args[2], args.get(3).map(String::as_str)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hostile-peer: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!(
                "usage: hostile-peer hold SERVER N LINE | ask SERVER N LINE | \
                 get SERVER TARGET [HEADER]"
            );
            ExitCode::from(2)
        }
    }
}
