//! The `p2p-server` binary as a user meets it: `--help` teaches, a bad config file is refused
//! with the file, section and key named, before anything listens. (Being an integration test of
//! this package also makes `cargo test --workspace` build the binary that
//! `tests/tests/combined_process.rs` starts.)

use std::process::Command;

fn p2p_server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_p2p-server"))
}

#[test]
fn help_names_every_server_and_the_config_file() {
    let out = p2p_server().arg("--help").output().expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "rendezvous",
        "dht-msg",
        "forwarding-check",
        "--config",
        "--backend",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}

#[test]
fn a_bad_config_is_refused_with_the_section_and_key() {
    let dir = std::env::temp_dir().join(format!("p2p-server-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[rendezvous]\nno-such-flag = 3\n").expect("write");
    let out = p2p_server()
        .arg("--config")
        .arg(&file)
        .output()
        .expect("runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("[rendezvous]") && err.contains("no-such-flag"),
        "{err}"
    );
}
