//! `netns-sim demo`: the lab at work, step by step.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use netns_sim::lab::{Lab, LabChild, LabOptions};
use netns_sim::{Topology, TwoNats, sys};

use crate::args::DemoArgs;
use crate::stop_flag;

/// Runs one step of the demo unless Ctrl-C was pressed.
fn check(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

pub(crate) fn demo(args: &DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let stop = stop_flag()?;
    sys::require_root()?;
    let me = std::env::current_exe().context("cannot find this executable")?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => me
            .parent()
            .map(Path::to_path_buf)
            .context("this executable has no directory")?,
    };
    let mut opts = LabOptions::default();
    if args.chronyd.is_some() {
        opts.chronyd.clone_from(&args.chronyd);
    }
    let ntp = opts.chronyd.is_some() || sys::find_in_path("chronyd").is_some();
    let upnp = sys::find_in_path("miniupnpd").is_some();
    if !ntp {
        println!("(chronyd not found: no NTP server; pass --chronyd PATH)");
    }
    if !upnp {
        println!("(miniupnpd not found: no UPnP; apt-get install miniupnpd)");
    }
    let topology = Topology::two_nats(TwoNats {
        a: args.nat_a,
        b: args.nat_b,
        upnp_a: upnp,
        ntp,
        ..TwoNats::default()
    });
    println!(
        "== building a lab: alice behind nat-a ({}), bob behind nat-b ({})",
        args.nat_a, args.nat_b
    );
    let lab = Lab::up_with(&topology, &opts)?;
    let result = demo_steps(&lab, &me, &bin_dir, ntp, upnp, &stop);
    println!("== tearing down lab {}", lab.prefix());
    lab.down()?;
    result?;
    println!(
        "== demo done in {:.1} s; `ip netns list` shows nothing of it",
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn probe_in(lab: &Lab, host: &str, me: &Path, extra: &[&str]) -> Result<String> {
    let mut argv = vec![
        me.to_str().context("executable path is not UTF-8")?,
        "probe",
    ];
    argv.extend_from_slice(extra);
    let out = lab.exec(host, &argv)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim())
    }
}

fn demo_steps(
    lab: &Lab,
    me: &Path,
    bin_dir: &Path,
    ntp: bool,
    upnp: bool,
    stop: &AtomicBool,
) -> Result<()> {
    print!("{}", lab.status_text());
    let pub_ip = lab.addr("pub");
    check(stop)?;
    println!("\n== 1. a TCP server on pub ({pub_ip}:7000) reports the address it sees");
    let server = lab.spawn(
        "pub",
        Command::new(me).args(["probe", "serve", "--listen", "0.0.0.0:7000"]),
    )?;
    server.wait_for_stdout("listening", Duration::from_secs(5))?;
    let target = format!("{pub_ip}:7000");
    let mut mapped_b = None;
    for host in ["alice", "bob"] {
        check(stop)?;
        let seen = probe_in(lab, host, me, &["connect", &target])?;
        println!(
            "   {host} ({}) connects to pub; pub sees {seen}  <- the NAT at work ({})",
            lab.addr(host),
            lab.host(host)?.nat
        );
        if host == "bob" {
            mapped_b = seen.rsplit_once(':').map(|(_, p)| p.to_owned());
        }
    }
    check(stop)?;
    let nat_b = lab.addr("nat-b");
    let port = mapped_b.unwrap_or_else(|| "7000".into());
    println!("\n== 2. pub2 never talked to bob: it tries bob's mapping {nat_b}:{port}");
    match probe_in(
        lab,
        "pub2",
        me,
        &[
            "connect",
            &format!("{nat_b}:{port}"),
            "--timeout-ms",
            "1500",
        ],
    ) {
        Ok(seen) => println!("   unexpectedly reached bob ({seen})"),
        Err(e) => println!("   no answer: dropped silently, as a home router does ({e})"),
    }
    if ntp {
        check(stop)?;
        println!("\n== 3. NTP from alice to chronyd on pub");
        match probe_in(lab, "alice", me, &["ntp", &format!("{pub_ip}:123")]) {
            Ok(r) => println!("   pub answers: {r}"),
            Err(e) => println!("   NTP failed: {e}"),
        }
    }
    if upnp && sys::find_in_path("upnpc").is_some() {
        check(stop)?;
        demo_upnp(lab, me)?;
    }
    let rendezvous = bin_dir.join("rendezvous");
    let node = bin_dir.join("p2p-node");
    if rendezvous.is_file() {
        check(stop)?;
        let server = demo_rendezvous(lab, me, &rendezvous)?;
        if node.is_file() {
            check(stop)?;
            demo_nodes(lab, &node)?;
            let dht_msg = bin_dir.join("dht-msg");
            if dht_msg.is_file() {
                check(stop)?;
                demo_unl(lab, &node, &dht_msg, ntp)?;
            }
        } else {
            println!(
                "\n(no p2p-node binary in {}: build the workspace to see the nodes step)",
                bin_dir.display()
            );
        }
        drop(server);
    } else {
        println!(
            "\n(no rendezvous binary in {}: build the workspace to see the rendezvous and node steps)",
            bin_dir.display()
        );
    }
    drop(server);
    Ok(())
}

/// Demo step: alice maps a port with UPnP and pub connects in through it.
fn demo_upnp(lab: &Lab, me: &Path) -> Result<()> {
    let nat_a = lab.addr("nat-a");
    let gw = lab
        .host("alice")?
        .lan_addr
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("\n== 4. alice asks nat-a for a port mapping with UPnP (miniupnpd), pub connects in");
    let alice_server = lab.spawn(
        "alice",
        Command::new(me).args(["probe", "serve", "--listen", "0.0.0.0:8080"]),
    )?;
    alice_server.wait_for_stdout("listening", Duration::from_secs(5))?;
    let alice = lab.addr("alice").to_string();
    let url = format!(
        "http://{gw}:{}/rootDesc.xml",
        netns_sim::nat::UPNP_HTTP_PORT
    );
    let out = lab.exec(
        "alice",
        &[
            "upnpc", "-u", &url, "-e", "demo", "-a", &alice, "8080", "8080", "TCP",
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = text.lines().find(|l| l.contains("is redirected")) {
        println!("   upnpc: {}", line.trim());
    }
    match probe_in(lab, "pub", me, &["connect", &format!("{nat_a}:8080")]) {
        Ok(seen) => {
            println!("   pub reached alice through {nat_a}:8080; alice saw pub as {seen}");
        }
        Err(e) => println!("   pub could not reach alice: {e}"),
    }
    Ok(())
}

/// Demo step: the overlay. A passive node on pub; alice and bob, active behind their NATs,
/// bootstrap from the rendezvous, connect to it, and each broadcasts a line the other receives.
fn demo_nodes(lab: &Lab, node: &Path) -> Result<()> {
    let pub_ip = lab.addr("pub");
    let rendezvous = format!("{pub_ip}:8000");
    println!("\n== 6. p2p-node: alice and bob join the overlay and broadcast");
    let wait = Duration::from_secs(10);
    let hub = lab.spawn(
        "pub",
        Command::new(node).args([
            "run",
            "--rendezvous",
            &rendezvous,
            "--bind",
            &pub_ip.to_string(),
            "--port",
            "7100",
            "--show-events",
        ]),
    )?;
    let hub_ready = Instant::now() + wait;
    while !hub.stderr().contains("advertised") {
        if Instant::now() > hub_ready {
            bail!(
                "the node on pub did not advertise; its stderr: {}",
                hub.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("   pub: a passive node on {pub_ip}:7100, registered with the rendezvous");
    let mut peers = Vec::new();
    for who in ["alice", "bob"] {
        let child = lab.spawn(
            who,
            Command::new(node).args([
                "run",
                "--rendezvous",
                &rendezvous,
                "--no-listen",
                "--show-events",
            ]),
        )?;
        child
            .wait_for_stdout("* connected", wait)
            .with_context(|| format!("{who} did not connect; its stderr: {}", child.stderr()))?;
        println!(
            "   {who} ({}): bootstrapped and connected to pub's node",
            lab.addr(who)
        );
        peers.push(child);
    }
    let lines = [
        "hello from alice, behind nat-a",
        "hello from bob, behind nat-b",
    ];
    for (i, line) in lines.iter().enumerate() {
        peers[i].send_line(line)?;
        let other = &peers[1 - i];
        other
            .wait_for_stdout(line, wait)
            .with_context(|| format!("the broadcast did not arrive; stderr: {}", other.stderr()))?;
        let (from, to) = if i == 0 {
            ("alice", "bob")
        } else {
            ("bob", "alice")
        };
        println!("   {from} broadcasts {line:?}  ->  {to} prints it");
    }
    drop(peers);
    drop(hub);
    Ok(())
}

/// Demo step: bob opens a connection to alice by her UNL: hole punching when both NATs map
/// ports predictably, else the rendezvous relays; lines go both ways.
fn demo_unl(lab: &Lab, node: &Path, dht_msg: &Path, ntp: bool) -> Result<()> {
    let pub_ip = lab.addr("pub");
    let rendezvous = format!("{pub_ip}:8000");
    let mailbox = format!("{pub_ip}:8090");
    let ntp_server = format!("{pub_ip}:123");
    println!("\n== 7. bob connects to alice by her UNL (punch through both NATs, else relay)");
    let wait = Duration::from_secs(10);
    let dht = lab.spawn("pub", Command::new(dht_msg).args(["--listen", &mailbox]))?;
    let started = Instant::now() + wait;
    while !dht.stderr().contains("listening") {
        if Instant::now() > started {
            bail!("dht-msg did not start: {}", dht.stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let unl_file = lab.state().workdir.join("alice.unl");
    let mut servers = vec!["--rendezvous", &rendezvous, "--dht-msg", &mailbox];
    if ntp {
        servers.extend(["--ntp", &ntp_server]);
    }
    // Only the servers, as a new user types it: alice works out her role and WAN address.
    let mut alice_args = vec![
        "run",
        "--unl-file",
        unl_file.to_str().context("lab directory is not UTF-8")?,
    ];
    alice_args.extend(&servers);
    let mut alice = lab.spawn("alice", Command::new(node).args(&alice_args))?;
    let deadline = Instant::now() + wait;
    let unl = loop {
        if let Ok(text) = std::fs::read_to_string(&unl_file)
            && !text.trim().is_empty()
            && alice.stderr().contains("mailbox registered")
        {
            break text.trim().to_owned();
        }
        if Instant::now() > deadline {
            bail!("alice wrote no UNL; her stderr: {}", alice.stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("   alice (simultaneous, registered with the rendezvous): UNL {unl}");
    let mut bob_args = vec!["connect", unl.as_str(), "--json", "--no-reach"];
    bob_args.extend(&servers);
    let mut bob = lab.spawn("bob", Command::new(node).args(&bob_args))?;
    let outcome = bob
        .wait_for_stdout("\"connected\":", wait)
        .with_context(|| format!("bob got no outcome; his stderr: {}", bob.stderr()))?;
    let value: serde_json::Value = serde_json::from_str(&outcome).unwrap_or_default();
    if value["connected"] != serde_json::Value::Bool(true) {
        bail!("bob could not connect: {outcome}");
    }
    println!(
        "   bob: connected by {} in {} ms (bob's NAT is {}: {})",
        value["method"].as_str().unwrap_or("?"),
        value["ms"],
        lab.host("bob")?.nat,
        if value["method"] == "punch" {
            "its ports are predictable, so both NATs were opened from inside at the same moment"
        } else {
            "its ports are random, so the punch cannot meet and the rendezvous splices the streams"
        }
    );
    let (to_alice, to_bob) = ("hello alice, bob here", "hello bob, alice here");
    bob.send_line(to_alice)?;
    alice
        .wait_for_stdout(to_alice, wait)
        .with_context(|| format!("alice did not get bob's line: {}", alice.stderr()))?;
    alice.send_line(to_bob)?;
    bob.wait_for_stdout(to_bob, wait)
        .with_context(|| format!("bob did not get alice's line: {}", bob.stderr()))?;
    println!("   bob -> alice {to_alice:?}; alice -> bob {to_bob:?}");
    Ok(())
}

/// Demo step: the workspace's rendezvous server on pub answers alice's `SOURCE TCP`; the
/// server keeps running (for the nodes step) until the returned child is dropped.
fn demo_rendezvous(lab: &Lab, me: &Path, rendezvous: &Path) -> Result<LabChild> {
    let pub_ip = lab.addr("pub");
    println!("\n== 5. the rendezvous server on pub ({pub_ip}:8000)");
    let listen = format!("{pub_ip}:8000");
    let server = lab.spawn("pub", Command::new(rendezvous).args(["--listen", &listen]))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        match probe_in(
            lab,
            "alice",
            me,
            &[
                "connect",
                &listen,
                "--send",
                "SOURCE TCP",
                "--timeout-ms",
                "1000",
            ],
        ) {
            Ok(r) => break r,
            Err(e) if Instant::now() > deadline => {
                bail!(
                    "rendezvous did not answer: {e}; its stderr: {}",
                    server.stderr()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    println!("   alice: SOURCE TCP  ->  rendezvous: {reply}");
    Ok(server)
}
