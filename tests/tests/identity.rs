//! The node's identity: one key, every id derived from it, the signed UNL v3, and the
//! `p2p-node` CLI's key file (`--identity`, the default file, `--ephemeral-identity`), `unl`
//! (v3 by default, `--v2`) and `connect` refusing a tampered UNL. Loopback only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use integration_tests::{Scratch, binary};
use node::identity::Identity;
use node::wire::key::peer_id_of;
use node::wire::unl::Unl;
use node::wire::unl::v3::{AnyUnl, UnlV3};
use node::{Config, Net};

/// `p2p-node ARGS` with `HOME` (and so the default identity directory) in `home`.
fn p2p_node(home: &Path, args: &[&str]) -> Output {
    Command::new(binary("p2p-node"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn every_id_of_a_node_comes_from_its_key_and_its_unl_is_signed_by_it() {
    let me = Identity::from_secret_bytes(&[42; 32]);
    let mut net = Net::new(
        Config::new()
            .with_bind("127.0.0.1".parse().unwrap())
            .with_identity(me.clone()),
    )
    .unwrap();
    net.start().unwrap();
    assert_eq!(net.key(), me.key());
    assert_eq!(net.node_id(), me.key().node_id());
    assert_eq!(net.peer_id(), me.key().peer_id());
    assert_eq!(net.peer_id(), peer_id_of(&net.node_id()));
    let unl = net.unl();
    assert_eq!(*unl.key(), me.key());
    assert_eq!(unl.node_id(), net.node_id());
    // The text is signed: it decodes, and the v2 form is the same node.
    let text = unl.to_string();
    assert!(text.starts_with("unl3."), "{text}");
    let back: UnlV3 = text.parse().unwrap();
    assert_eq!(back, unl);
    let v2 = net.unl_v2();
    assert_eq!(v2, unl.to_v2());
    assert_eq!(v2.node_id, Some(net.node_id()));
    assert_eq!(v2.port, net.local_addr().unwrap().port());
    // Unchanged facts: the same signed UNL (not signed again).
    assert_eq!(net.unl(), unl);
}

#[test]
fn the_cli_keeps_its_key_in_a_0600_file_and_prints_a_v3_unl_or_on_request_a_v2_one() {
    let home = Scratch::new("cli");
    let key_file = home.0.join("alice.key");
    let key_arg = key_file.to_str().unwrap();
    let first = stdout(&p2p_node(
        &home.0,
        &["unl", "--bind", "127.0.0.1", "--identity", key_arg],
    ));
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the key file is created with mode 0600");
    let unl: UnlV3 = first.parse().expect("a v3 UNL");
    // The same file, the same node.
    let again: UnlV3 = stdout(&p2p_node(
        &home.0,
        &["unl", "--bind", "127.0.0.1", "--identity", key_arg],
    ))
    .parse()
    .unwrap();
    assert_eq!(again.key(), unl.key());
    let v2: Unl = stdout(&p2p_node(
        &home.0,
        &["unl", "--v2", "--bind", "127.0.0.1", "--identity", key_arg],
    ))
    .parse()
    .expect("a v2 UNL");
    assert_eq!(v2.node_id, Some(unl.node_id()));
    // JSON names the key and the node id.
    let json: serde_json::Value = serde_json::from_str(&stdout(&p2p_node(
        &home.0,
        &[
            "unl",
            "--json",
            "--bind",
            "127.0.0.1",
            "--identity",
            key_arg,
        ],
    )))
    .unwrap();
    assert_eq!(json["key"], unl.key().to_string());
    assert_eq!(json["node_id"], unl.node_id().to_string());

    // No --identity: the default file under $HOME, created once and kept.
    let default: UnlV3 = stdout(&p2p_node(&home.0, &["unl", "--bind", "127.0.0.1"]))
        .parse()
        .unwrap();
    let default_file = home.0.join(".local/share/p2p-node/identity");
    assert!(default_file.is_file(), "default identity file created");
    let loaded = Identity::load(&default_file).unwrap();
    assert_eq!(*default.key(), loaded.key());
    assert_ne!(default.key(), unl.key());
    // --ephemeral-identity: a new key every run, no file.
    let e1: UnlV3 = stdout(&p2p_node(
        &home.0,
        &["unl", "--ephemeral-identity", "--bind", "127.0.0.1"],
    ))
    .parse()
    .unwrap();
    let e2: UnlV3 = stdout(&p2p_node(
        &home.0,
        &["unl", "--ephemeral-identity", "--bind", "127.0.0.1"],
    ))
    .parse()
    .unwrap();
    assert_ne!(e1.key(), e2.key());
    assert_ne!(e1.key(), default.key());

    // A key file others can read is refused, naming it.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = p2p_node(
        &home.0,
        &["unl", "--bind", "127.0.0.1", "--identity", key_arg],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(key_arg) && err.contains("0644"), "{err}");
}

#[test]
fn connect_refuses_a_tampered_v3_unl_with_a_clear_error_and_accepts_either_version() {
    let home = Scratch::new("tamper");
    let me = Identity::from_secret_bytes(&[9; 32]);
    let mut net = Net::new(
        Config::new()
            .with_bind("127.0.0.1".parse().unwrap())
            .with_identity(me),
    )
    .unwrap();
    net.start().unwrap();
    let text = net.unl().to_string();
    // Change one character: the signature no longer verifies.
    let mut chars: Vec<char> = text.chars().collect();
    let at = chars.len() - 10; // in the signature
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    assert!(matches!(
        tampered.parse::<AnyUnl>(),
        Err(node::wire::unl::v3::AnyUnlError::V3(_))
    ));
    let out = p2p_node(
        &home.0,
        &[
            "connect",
            &tampered,
            "--ephemeral-identity",
            "--bind",
            "127.0.0.1",
            "--no-stdin",
            "--timeout",
            "1s",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "refused before connecting");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a valid UNL") && err.contains("signature"),
        "{err}"
    );
    // Both versions parse as a connect target.
    assert!(matches!(text.parse::<AnyUnl>(), Ok(AnyUnl::V3(_))));
    let v2 = net.unl_v2().to_string();
    assert!(matches!(v2.parse::<AnyUnl>(), Ok(AnyUnl::V2(_))));
}
