//! The Rust twin of PyP2P's alice/bob example: a node that bootstraps, advertises, and every
//! second prints what its peers sent and sends each of them a line.
//!
//! ```sh
//! cargo run --release -p rendezvous -- --listen 127.0.0.1:8000      # terminal 1
//! cargo run -p node --example alice_bob -- alice 127.0.0.1:8000     # terminal 2
//! cargo run -p node --example alice_bob -- bob 127.0.0.1:8000       # terminal 3
//! ```
//!
//! PyP2P's version, for comparison:
//! ```python
//! alice = Net(passive_bind="192.168.0.45", passive_port=44444, node_type="passive")
//! alice.start(); alice.bootstrap(); alice.advertise()
//! while 1:
//!     for con in alice:
//!         for reply in con:
//!             print(reply)
//!         con.send_line("test")
//!     time.sleep(1)
//! ```

use std::time::Duration;

use node::{Config, Net};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "alice".to_owned());
    let rendezvous = args.next().unwrap_or_else(|| "127.0.0.1:8000".to_owned());

    let mut net = Net::new(
        Config::new()
            .with_bind("127.0.0.1".parse()?)
            .with_rendezvous(rendezvous),
    )?;
    net.start()?;
    net.advertise()?;
    net.bootstrap()?;
    println!("{name}: listening on {:?}", net.local_addr());

    // Event loop: each `for con in &mut net` runs one non-blocking turn of the node's loop.
    loop {
        for con in &mut net {
            for reply in con.lines() {
                println!("{name} got: {reply}");
            }
            con.send_line(&format!("test from {name}"))?;
        }
        // PyP2P sleeps too; `net.poll(Some(timeout))` would instead wake as soon as a line
        // arrives.
        std::thread::sleep(Duration::from_secs(1));
    }
}
