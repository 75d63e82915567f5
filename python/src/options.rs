//! From `Net(...)`'s keyword arguments to a [`node::Config`]: PyP2P's names where they still
//! make sense (`passive_bind`, `passive_port`, `node_type`, `max_outbound`, `max_inbound`),
//! ours (`rendezvous`, `dht_msg`, `ntp`, `forwarding_check`, `wan_ip`, ...), and `config=`, a
//! dict of any other [`node::Config`] field, checked by the node's own deserialiser (so an
//! unknown or malformed field is named in the error).
//!
//! Pure Rust (no Python types), so it is tested with `cargo test`.

use std::net::Ipv4Addr;

use node::{Config, Role};
use serde_json::{Map, Value};
use thiserror::Error;

/// A keyword argument that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionsError {
    /// A value outside what the keyword accepts.
    #[error("{name}={value:?} is not valid: expected {expected}")]
    BadValue {
        /// The keyword.
        name: &'static str,
        /// The value given.
        value: String,
        /// What it accepts.
        expected: &'static str,
    },
    /// A key of `config=` that is not a node setting.
    #[error("config={{{key:?}: ...}} is not a node setting (known: {known})")]
    UnknownSetting {
        /// The key.
        key: String,
        /// Every known key, comma-separated.
        known: String,
    },
    /// A `config=` value the node's settings refuse.
    #[error("config= is not valid: {0}")]
    Setting(String),
}

/// PyP2P's `net_type`: a `p2p` net joins the overlay; a `direct` net only makes and accepts
/// direct connections (by UNL), so `bootstrap()` and `advertise()` do nothing on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetKind {
    /// Joins the overlay (the default).
    P2p,
    /// Direct connections only.
    Direct,
}

/// The keyword arguments of `Net(...)` that map to node settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    /// `passive_bind`: the address to accept connections on (default `::`: IPv4 and IPv6).
    pub passive_bind: Option<String>,
    /// `passive_port`: the port to accept connections on (default 0: any).
    pub passive_port: u16,
    /// `node_type`: `auto` (the default: the node works its role out from what the
    /// rendezvous tells it), `passive`, `active` or `simultaneous`.
    pub node_type: Option<String>,
    /// `net_type`: `p2p` or `direct` (default `p2p`).
    pub net_type: Option<String>,
    /// `max_outbound`: outbound connections bootstrap aims for.
    pub max_outbound: Option<usize>,
    /// `max_inbound`: inbound connections accepted at most.
    pub max_inbound: Option<usize>,
    /// `rendezvous`: `host:port` of each rendezvous server, tried in order.
    pub rendezvous: Vec<String>,
    /// `dht_msg`: the dht-msg mailbox server (`host:port`), for reverse connect and relay.
    pub dht_msg: Option<String>,
    /// `ntp`: an NTP server (`host:port`) for timing hole punches.
    pub ntp: Option<String>,
    /// `forwarding_check`: the forwarding-check server URL (`http://host:port`).
    pub forwarding_check: Option<String>,
    /// `wan_ip`: our WAN address when known beforehand.
    pub wan_ip: Option<String>,
    /// `upnp`: try UPnP port forwarding at start (only with a forwarding check).
    pub upnp: Option<bool>,
    /// `natpmp`: try NAT-PMP port forwarding at start (only with a forwarding check).
    pub natpmp: Option<bool>,
    /// `listen`: accept connections at all (default true).
    pub listen: Option<bool>,
    /// `seed`: seed for ids and shuffles (default random).
    pub seed: Option<u64>,
    /// `config`: any other node setting by its name (durations as seconds or `"250ms"` text).
    pub config: Map<String, Value>,
}

impl Options {
    /// The node settings and the net's kind.
    pub fn build(&self) -> Result<(Config, NetKind), OptionsError> {
        let mut config = overlay(&self.config)?;
        if let Some(bind) = &self.passive_bind {
            config.bind = bind.parse().map_err(|_| OptionsError::BadValue {
                name: "passive_bind",
                value: bind.clone(),
                expected: "an IP address such as \"0.0.0.0\" or \"127.0.0.1\"",
            })?;
        }
        if self.passive_port != 0 {
            config.port = self.passive_port;
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(node_type) = &self.node_type {
            config.node_type = match node_type.as_str() {
                "auto" => Role::Auto,
                "passive" => Role::Passive,
                "active" => Role::Active,
                "simultaneous" => Role::Simultaneous,
                _ => {
                    return Err(OptionsError::BadValue {
                        name: "node_type",
                        value: node_type.clone(),
                        expected: "\"auto\", \"passive\", \"active\" or \"simultaneous\"",
                    });
                }
            };
        }
        if !config.listen {
            // A node that accepts nothing can only dial out.
            config.node_type = Role::Active;
        }
        let kind = match self.net_type.as_deref() {
            None | Some("p2p") => NetKind::P2p,
            Some("direct") => NetKind::Direct,
            Some(other) => {
                return Err(OptionsError::BadValue {
                    name: "net_type",
                    value: other.to_owned(),
                    expected: "\"p2p\" or \"direct\"",
                });
            }
        };
        if let Some(n) = self.max_outbound {
            config.max_outbound = n;
        }
        if let Some(n) = self.max_inbound {
            config.max_inbound = n;
        }
        for server in &self.rendezvous {
            check_host_port("rendezvous", server)?;
            config.rendezvous.push(server.clone());
        }
        if let Some(server) = &self.dht_msg {
            check_host_port("dht_msg", server)?;
            config.dht_msg = Some(server.clone());
        }
        if let Some(server) = &self.ntp {
            check_host_port("ntp", server)?;
            config.ntp = Some(server.clone());
        }
        if let Some(url) = &self.forwarding_check {
            config.forwarding_check = Some(url.clone());
        }
        if let Some(ip) = &self.wan_ip {
            config.wan_ip = Some(ip.parse::<Ipv4Addr>().map_err(|_| OptionsError::BadValue {
                name: "wan_ip",
                value: ip.clone(),
                expected: "an IPv4 address",
            })?);
        }
        if let Some(upnp) = self.upnp {
            config.upnp = upnp;
        }
        if let Some(natpmp) = self.natpmp {
            config.natpmp = natpmp;
        }
        if let Some(seed) = self.seed {
            config.seed = Some(seed);
        }
        if config.node_type == Role::Simultaneous && config.rendezvous.is_empty() {
            return Err(OptionsError::BadValue {
                name: "node_type",
                value: "simultaneous".to_owned(),
                expected: "a rendezvous server as well (it registers there for hole punching)",
            });
        }
        Ok((config, kind))
    }
}

/// `host:port` with a port; the host is resolved later by the node (which names it if it
/// does not resolve).
fn check_host_port(name: &'static str, value: &str) -> Result<(), OptionsError> {
    let port_ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if port_ok {
        Ok(())
    } else {
        Err(OptionsError::BadValue {
            name,
            value: value.to_owned(),
            expected: "\"host:port\"",
        })
    }
}

/// The defaults with `extra` laid over them. A number for a duration setting (one whose
/// default is text such as `"5000ms"`) is seconds.
fn overlay(extra: &Map<String, Value>) -> Result<Config, OptionsError> {
    let Value::Object(mut fields) = serde_json::to_value(Config::default())
        .map_err(|e| OptionsError::Setting(e.to_string()))?
    else {
        return Err(OptionsError::Setting(
            "node settings are not an object".to_owned(),
        ));
    };
    for (key, value) in extra {
        let Some(default) = fields.get(key) else {
            let mut known: Vec<&str> = fields.keys().map(String::as_str).collect();
            known.sort_unstable();
            return Err(OptionsError::UnknownSetting {
                key: key.clone(),
                known: known.join(", "),
            });
        };
        let is_duration = default.as_str().is_some_and(|d| d.ends_with("ms"));
        let value = match value.as_f64() {
            Some(seconds) if is_duration => duration_text(key, seconds)?,
            _ => value.clone(),
        };
        fields.insert(key.clone(), value);
    }
    serde_json::from_value(Value::Object(fields)).map_err(|e| OptionsError::Setting(e.to_string()))
}

/// Seconds as the node's duration text (whole milliseconds).
fn duration_text(key: &str, seconds: f64) -> Result<Value, OptionsError> {
    if !(0.0..=1e9).contains(&seconds) {
        return Err(OptionsError::Setting(format!(
            "{key}: {seconds} is not a duration in seconds"
        )));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ms = (seconds * 1000.0).round() as u64;
    Ok(Value::String(format!("{ms}ms")))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::time::Duration;

    use super::*;

    #[test]
    fn pyp2p_names_map_to_node_settings() {
        let options = Options {
            passive_bind: Some("127.0.0.1".to_owned()),
            passive_port: 44444,
            node_type: Some("active".to_owned()),
            max_outbound: Some(3),
            max_inbound: Some(5),
            rendezvous: vec!["127.0.0.1:8000".to_owned()],
            dht_msg: Some("localhost:8090".to_owned()),
            wan_ip: Some("203.0.113.7".to_owned()),
            ..Options::default()
        };
        let (config, kind) = options.build().unwrap();
        assert_eq!(kind, NetKind::P2p);
        assert_eq!(config.bind, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(config.port, 44444);
        assert_eq!(config.node_type, Role::Active);
        assert_eq!((config.max_outbound, config.max_inbound), (3, 5));
        assert_eq!(config.rendezvous, ["127.0.0.1:8000"]);
        assert_eq!(config.dht_msg.as_deref(), Some("localhost:8090"));
        assert_eq!(config.wan_ip, Some(Ipv4Addr::new(203, 0, 113, 7)));
        let defaults = Options::default().build().unwrap().0;
        assert_eq!(defaults, Config::default());
    }

    /// The error text of `options`.
    fn error(options: &Options) -> String {
        options.build().unwrap_err().to_string()
    }

    /// `config=` with one `key: value`.
    fn with_setting(key: &str, value: Value) -> Options {
        let mut config = Map::new();
        config.insert(key.to_owned(), value);
        Options {
            config,
            ..Options::default()
        }
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (
                Options {
                    node_type: Some("pasive".to_owned()),
                    ..Options::default()
                },
                "node_type=\"pasive\"",
            ),
            (
                Options {
                    passive_bind: Some("eth0".to_owned()),
                    ..Options::default()
                },
                "passive_bind=\"eth0\"",
            ),
            (
                Options {
                    rendezvous: vec!["127.0.0.1".to_owned()],
                    ..Options::default()
                },
                "rendezvous=\"127.0.0.1\"",
            ),
            (
                Options {
                    net_type: Some("mesh".to_owned()),
                    ..Options::default()
                },
                "net_type=\"mesh\"",
            ),
            (
                Options {
                    node_type: Some("simultaneous".to_owned()),
                    ..Options::default()
                },
                "rendezvous server",
            ),
            (
                Options {
                    wan_ip: Some("::1".to_owned()),
                    ..Options::default()
                },
                "wan_ip=\"::1\"",
            ),
        ];
        for (options, want) in cases {
            let text = error(&options);
            assert!(text.contains(want), "{text}");
        }
    }

    #[test]
    fn config_dict_reaches_every_setting_and_names_unknown_ones() {
        let mut options = with_setting("rebootstrap_interval", Value::from(0.25));
        options
            .config
            .insert("query_timeout".to_owned(), Value::from("2s"));
        options
            .config
            .insert("max_line_bytes".to_owned(), Value::from(1000));
        let config = options.build().unwrap().0;
        assert_eq!(config.rebootstrap_interval, Duration::from_millis(250));
        assert_eq!(config.query_timeout, Duration::from_secs(2));
        assert_eq!(config.max_line_bytes, 1000);

        let text = error(&with_setting("max_line_byte", Value::from(1000)));
        assert!(text.contains("\"max_line_byte\""), "{text}");
        assert!(text.contains("max_line_bytes"), "{text}");
        let text = error(&with_setting("query_timeout", Value::from("soon")));
        assert!(text.contains("soon"), "{text}");
        let text = error(&with_setting("query_timeout", Value::from(-1.0)));
        assert!(text.contains("query_timeout: -1"), "{text}");
    }

    #[test]
    fn a_node_that_does_not_listen_is_active() {
        let config = Options {
            listen: Some(false),
            ..Options::default()
        }
        .build()
        .unwrap()
        .0;
        assert_eq!(config.node_type, Role::Active);
        assert!(!config.listen);
    }
}
