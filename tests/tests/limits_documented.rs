//! Every limit of every server (and of the node) is a flag that `--help` shows with its default,
//! and the README's "Limits" section lists it under that program. Catches a new limit added
//! without documentation, or a README table that drifted from the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use integration_tests::binary;

/// Whether a flag name is a limit (a cap, a rate, a timeout or a lifetime).
fn is_limit(flag: &str) -> bool {
    flag.starts_with("max-")
        || [
            "timeout",
            "rate",
            "burst",
            "lifetime",
            "ttl",
            "tolerance",
            "per-minute",
        ]
        .iter()
        .any(|w| flag.contains(w))
}

/// The limit flags in a `--help` text, each with its help block.
fn limit_flags(help: &str) -> Vec<(String, String)> {
    let mut flags: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("--") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            flags.push((name, String::new()));
        } else if trimmed.starts_with('-') {
            flags.push((String::new(), String::new()));
        } else if let Some((_, block)) = flags.last_mut() {
            block.push_str(line);
            block.push('\n');
        }
    }
    flags.retain(|(name, _)| is_limit(name));
    flags
}

/// The README's `### <heading>` subsection of "## Limits".
fn readme_section(heading: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let limits = readme
        .split_once("\n## Limits\n")
        .expect("a Limits section")
        .1;
    let limits = limits.split("\n## ").next().unwrap();
    let start = limits
        .find(&format!("\n### {heading}"))
        .unwrap_or_else(|| panic!("no `### {heading}` under Limits"));
    let section = &limits[start + 5..];
    section.split("\n### ").next().unwrap().to_owned()
}

#[test]
fn every_limit_has_a_default_in_help_and_a_row_in_the_readme() {
    for (program, args, heading) in [
        ("rendezvous", vec!["--help"], "rendezvous"),
        ("forwarding-check", vec!["--help"], "forwarding-check"),
        ("dht-msg", vec!["--help"], "dht-msg"),
        ("p2p-node", vec!["run", "--help"], "the node"),
    ] {
        let out = Command::new(binary(program)).args(&args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}");
        let help = String::from_utf8(out.stdout).unwrap();
        let flags = limit_flags(&help);
        assert!(flags.len() >= 3, "{program}: only {flags:?}");
        let section = readme_section(heading);
        for (flag, block) in &flags {
            assert!(
                block.contains("[default: "),
                "{program} --help shows no default for --{flag}:\n{block}"
            );
            assert!(
                section.contains(&format!("`--{flag}`")),
                "README, Limits / {heading}, lacks `--{flag}`"
            );
        }
    }
}
