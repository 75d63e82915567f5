//! `p2p-server`: the rendezvous (with its relay), dht-msg and forwarding-check in one
//! process, for a small deployment: one service, one config file, one metrics endpoint.
//!
//! Why one binary with one thread per server, rather than `rendezvous --with-mailbox`:
//! - the three servers keep their own ports and protocols (PyP2P clients expect each on its
//!   own port), their own event loop and their own limits, exactly as when run apart, so
//!   nothing about them changes and a large deployment can split them again;
//! - three loops use both cores of a small machine, where one loop would use one;
//! - the rendezvous crate does not grow a dependency on the other two.
//!
//! The config file's sections are the servers' own command lines: every key of
//! `[rendezvous]`, `[dht-msg]` and `[forwarding-check]` is that server's flag without its
//! dashes (see `rendezvous --help` etc.), so there is one list of settings to learn, and a
//! misspelt key is refused with the flag's name. A section with `enabled = false` leaves that
//! server out. Top-level keys: `metrics-listen` (one endpoint for all three) and `backend`
//! (the Redis URL given to the rendezvous and dht-msg unless their section names one).
//!
//! ```toml
//! metrics-listen = "127.0.0.1:9464"
//!
//! [rendezvous]
//! listen = "[::]:8000"
//!
//! [dht-msg]
//! listen = "[::]:8090"
//! data-dir = "/var/lib/p2p-server/dht-msg"
//!
//! [forwarding-check]
//! listen = "[::]:8080"
//! ```

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use clap::Parser as _;
use toml::{Table, Value};

/// What to run, from the config file (and the command line).
#[derive(Debug)]
pub struct Plan {
    /// The rendezvous server, unless disabled.
    pub rendezvous: Option<rendezvous::cli::Args>,
    /// The mailbox server, unless disabled.
    pub dht_msg: Option<dht_msg::cli::Args>,
    /// The forwarding check, unless disabled.
    pub forwarding_check: Option<forwarding_check::cli::Args>,
    /// Where to serve the metrics of all three.
    pub metrics_listen: Option<SocketAddr>,
}

/// The default `listen` of each server when its section does not say: both families on one
/// socket each (`[::]` with `IPV6_V6ONLY` off; `0.0.0.0` on a host without IPv6).
pub const DEFAULT_LISTEN: [(&str, &str); 3] = [
    ("rendezvous", "[::]:8000"),
    ("dht-msg", "[::]:8090"),
    ("forwarding-check", "[::]:8080"),
];

/// Reads a config file's text (`source` names it in errors). Empty text runs all three
/// servers with their defaults.
pub fn plan(text: &str, source: &str) -> anyhow::Result<Plan> {
    let mut table: Table = text
        .parse()
        .with_context(|| format!("{source}: not valid TOML"))?;
    let metrics_listen = match table.remove("metrics-listen") {
        None => None,
        Some(Value::String(s)) => Some(
            s.parse()
                .with_context(|| format!("{source}: metrics-listen {s:?} is not IP:PORT"))?,
        ),
        Some(other) => {
            bail!("{source}: metrics-listen must be a string like \"127.0.0.1:9464\", got {other}")
        }
    };
    let backend = match table.remove("backend") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            bail!("{source}: backend must be a string like \"redis://127.0.0.1:6379\", got {other}")
        }
    };
    let mut sections = [None, None, None];
    for (i, (name, default_listen)) in DEFAULT_LISTEN.iter().enumerate() {
        let section = match table.remove(*name) {
            None => Table::new(),
            Some(Value::Table(t)) => t,
            Some(other) => bail!("{source}: [{name}] must be a section, got {other}"),
        };
        let with_backend = *name != "forwarding-check";
        sections[i] = argv(
            name,
            section,
            default_listen,
            backend.as_deref().filter(|_| with_backend),
        )
        .with_context(|| format!("{source}: [{name}]"))?;
    }
    if let Some(key) = table.keys().next() {
        bail!(
            "{source}: unknown key or section {key:?} (expected metrics-listen, backend, \
             [rendezvous], [dht-msg], [forwarding-check])"
        );
    }
    let [r, d, f] = sections;
    let parse_err = |name: &str, e: clap::Error| {
        anyhow::anyhow!("{source}: [{name}]: {}", e.render().to_string().trim())
    };
    Ok(Plan {
        rendezvous: r
            .map(rendezvous::cli::Args::try_parse_from)
            .transpose()
            .map_err(|e| parse_err("rendezvous", e))?,
        dht_msg: d
            .map(dht_msg::cli::Args::try_parse_from)
            .transpose()
            .map_err(|e| parse_err("dht-msg", e))?,
        forwarding_check: f
            .map(forwarding_check::cli::Args::try_parse_from)
            .transpose()
            .map_err(|e| parse_err("forwarding-check", e))?,
        metrics_listen,
    })
}

/// A section as a command line (`None`: `enabled = false`).
fn argv(
    name: &str,
    mut section: Table,
    default_listen: &str,
    backend: Option<&str>,
) -> anyhow::Result<Option<Vec<String>>> {
    match section.remove("enabled") {
        None | Some(Value::Boolean(true)) => {}
        Some(Value::Boolean(false)) => return Ok(None),
        Some(other) => bail!("enabled must be true or false, got {other}"),
    }
    if section.contains_key("metrics-listen") {
        bail!("metrics-listen belongs at the top of the file (one endpoint for all servers)");
    }
    let mut args = vec![name.to_owned()];
    if !section.contains_key("listen") {
        args.extend(["--listen".to_owned(), default_listen.to_owned()]);
    }
    if let Some(url) = backend
        && !section.contains_key("backend")
    {
        args.extend(["--backend".to_owned(), url.to_owned()]);
    }
    for (key, value) in section {
        let flag = format!("--{key}");
        match value {
            Value::Boolean(true) => args.push(flag),
            Value::Boolean(false) => {}
            Value::String(s) => args.extend([flag, s]),
            Value::Integer(n) => args.extend([flag, n.to_string()]),
            Value::Float(x) => args.extend([flag, x.to_string()]),
            other => bail!("{key}: expected a string, a number or a boolean, got {other}"),
        }
    }
    Ok(Some(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_runs_everything_with_defaults() {
        let plan = plan("", "test.toml").unwrap();
        assert_eq!(
            plan.rendezvous.unwrap().listen,
            "[::]:8000".parse().unwrap()
        );
        assert_eq!(plan.dht_msg.unwrap().listen, "[::]:8090".parse().unwrap());
        assert!(plan.forwarding_check.is_some());
        assert!(plan.metrics_listen.is_none());
    }

    #[test]
    fn sections_are_the_servers_flags() {
        let text = r#"
            metrics-listen = "127.0.0.1:9464"
            backend = "redis://127.0.0.1:6379"
            [rendezvous]
            listen = "127.0.0.1:8000"
            node-lifetime = "1h"
            no-relay = true
            max-connections = 100
            [dht-msg]
            max-message-bytes = 1000
            [forwarding-check]
            enabled = false
        "#;
        let plan = plan(text, "t.toml").unwrap();
        let r = plan.rendezvous.unwrap().config().unwrap();
        assert!(!r.relay_enabled);
        assert_eq!(r.max_connections, 100);
        assert_eq!(r.node_lifetime, std::time::Duration::from_hours(1));
        assert_eq!(r.backend.as_deref(), Some("redis://127.0.0.1:6379"));
        assert!(plan.forwarding_check.is_none());
        assert_eq!(plan.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn mistakes_name_the_file_section_and_key() {
        let err = plan("[rendezvous]\nmax-conections = 5\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.toml: [rendezvous]") && err.contains("--max-conections"),
            "{err}"
        );
        let err = plan("[relay]\n", "s.toml").unwrap_err().to_string();
        assert!(err.contains("unknown key or section \"relay\""), "{err}");
        let err = plan("metrics-listen = 5\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics-listen must be a string"), "{err}");
    }
}
