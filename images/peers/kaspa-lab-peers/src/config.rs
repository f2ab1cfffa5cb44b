//! Settings from flags and environment variables. Every setting has one environment variable and one flag
//! (`--listen` for `LIBP2P_LISTEN_MULTIADDRS`, ...); a flag wins over the variable. Bad input is a
//! [`ConfigError`] naming the variable, which the binaries print as one line and exit 2.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// A setting: its environment variable, its flag, and the help line.
pub struct Setting {
    pub env: &'static str,
    pub flag: &'static str,
    pub help: &'static str,
}

pub const LISTEN: Setting = Setting {
    env: "LIBP2P_LISTEN_MULTIADDRS",
    flag: "--listen",
    help: "comma-separated multiaddrs to listen on",
};
pub const RELAYS: Setting = Setting {
    env: "LIBP2P_RELAY_MULTIADDRS",
    flag: "--relay",
    help: "comma-separated relay multiaddrs, each ending in /p2p/<relay peer id>",
};
pub const REMOTE_PEER: Setting = Setting {
    env: "LIBP2P_REMOTE_PEER_ID",
    flag: "--remote-peer-id",
    help: "peer id of the server to reach (client)",
};
pub const REMOTE_ADDRS: Setting = Setting {
    env: "LIBP2P_REMOTE_MULTIADDRS",
    flag: "--remote",
    help: "comma-separated circuit addrs of the server, tried in order (client)",
};
pub const SEED: Setting = Setting {
    env: "LIBP2P_IDENTITY_SEED",
    flag: "--identity-seed",
    help: "any string: a deterministic ed25519 identity is derived from it (sha256)",
};
pub const KEY_FILE: Setting = Setting {
    env: "LIBP2P_IDENTITY_FILE",
    flag: "--identity-file",
    help: "file with a protobuf-encoded libp2p keypair (instead of a seed)",
};
pub const NETWORK: Setting = Setting {
    env: "KASPA_NETWORK",
    flag: "--network",
    help: "mainnet, testnet-10, testnet-11, devnet or simnet",
};
pub const DCUTR: Setting = Setting {
    env: "DCUTR_ENABLED",
    flag: "--dcutr",
    help: "true/false: false builds the peer without the DCUtR behaviour (negative control)",
};
pub const FALLBACK: Setting = Setting {
    env: "ALLOW_RELAY_FALLBACK",
    flag: "--allow-relay-fallback",
    help: "true/false: run the handshake over the relay when no direct connection comes (client)",
};
pub const DIRECT_DEADLINE: Setting = Setting {
    env: "DIRECT_DEADLINE_SECS",
    flag: "--direct-deadline",
    help: "seconds to wait for a direct connection after the relayed one (client)",
};
pub const SESSION: Setting = Setting {
    env: "SESSION_SECS",
    flag: "--session",
    help: "seconds of Kaspa ping/pong after the handshake before the client exits 0",
};
pub const PING_EVERY: Setting = Setting {
    env: "SESSION_PING_SECS",
    flag: "--ping-every",
    help: "seconds between a pong and the next ping of the session (client)",
};
pub const PONGS_AFTER_RELAY: Setting = Setting {
    env: "SESSION_PONGS_AFTER_RELAY_LOSS",
    flag: "--pongs-after-relay-loss",
    help: "end the session this many pongs after the connection to the relay closed (0: only SESSION_SECS) (client)",
};
pub const PING_STREAMS: Setting = Setting {
    env: "KASPA_PING_STREAMS",
    flag: "--ping-streams",
    help: "concurrent Kaspa streams opened after the handshake, one ping each (client)",
};
pub const IDLE: Setting = Setting {
    env: "IDLE_TIMEOUT_SECS",
    flag: "--idle-timeout",
    help: "seconds an idle connection stays open",
};
pub const RUN_FOR: Setting = Setting {
    env: "RUN_SECS",
    flag: "--run-for",
    help: "stop after this many seconds (0: until SIGTERM/SIGINT)",
};

/// The lying-peer control, and nothing else: a negative control for the lab's ground truth. The peers run
/// their Kaspa session over the relayed connection but log it as direct (see [`crate::lie`]). It runs without
/// DCUtR, so no direct flow can exist; it is refused together with `DCUTR_ENABLED=true` or (client)
/// `ALLOW_RELAY_FALLBACK=true`, which would make the run ambiguous.
pub const LIE_DIRECT: Setting = Setting {
    env: "LAB_LIE_DIRECT",
    flag: "--lie-direct",
    help: "true/false: NEGATIVE CONTROL ONLY: run the session over the relay and log it as direct",
};

pub const NETWORKS: [&str; 5] = ["mainnet", "testnet-10", "testnet-11", "devnet", "simnet"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Raw values by environment-variable name, flags folded over the environment.
pub struct Source {
    values: HashMap<String, String>,
}

pub enum Parsed {
    Run(Source),
    Help,
}

impl Source {
    /// Reads `settings` from the environment, then from `args` (`--flag value`, `--flag=value`, or a bare
    /// `--flag` for booleans). Unknown flags are an error naming them.
    pub fn parse<I: IntoIterator<Item = String>>(
        settings: &[&Setting],
        env: impl Fn(&str) -> Option<String>,
        args: I,
    ) -> Result<Parsed, ConfigError> {
        let mut values = HashMap::new();
        for setting in settings {
            if let Some(value) = env(setting.env) {
                values.insert(setting.env.to_string(), value);
            }
        }
        let mut args = args.into_iter().peekable();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Ok(Parsed::Help);
            }
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            };
            let Some(setting) = settings.iter().find(|s| s.flag == flag) else {
                return Err(ConfigError {
                    variable: "argv",
                    message: format!("unknown argument {arg:?} (see --help)"),
                });
            };
            let value = match inline {
                Some(value) => value,
                None => match args.peek() {
                    Some(next) if !next.starts_with("--") => args.next().unwrap_or_default(),
                    _ => "true".to_string(),
                },
            };
            values.insert(setting.env.to_string(), value);
        }
        Ok(Parsed::Run(Source { values }))
    }

    fn raw(&self, setting: &Setting) -> Option<&str> {
        self.values
            .get(setting.env)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn string(&self, setting: &Setting) -> Option<String> {
        self.raw(setting).map(str::to_string)
    }

    pub fn multiaddrs(
        &self,
        setting: &Setting,
        default: &str,
    ) -> Result<Vec<Multiaddr>, ConfigError> {
        let text = self.raw(setting).unwrap_or(default);
        text.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                let bad = |why: String| ConfigError {
                    variable: setting.env,
                    message: format!("bad multiaddr {part:?}: {why}"),
                };
                let addr = part
                    .parse::<Multiaddr>()
                    .map_err(|error| bad(error.to_string()))?;
                ip_tcp(&addr).map_err(bad)?;
                Ok(addr)
            })
            .collect()
    }

    pub fn required_multiaddrs(&self, setting: &Setting) -> Result<Vec<Multiaddr>, ConfigError> {
        let addrs = self.multiaddrs(setting, "")?;
        if addrs.is_empty() {
            return Err(ConfigError {
                variable: setting.env,
                message: "is required".into(),
            });
        }
        Ok(addrs)
    }

    pub fn peer_id(&self, setting: &Setting) -> Result<PeerId, ConfigError> {
        let text = self.raw(setting).ok_or(ConfigError {
            variable: setting.env,
            message: "is required".into(),
        })?;
        text.parse::<PeerId>().map_err(|error| ConfigError {
            variable: setting.env,
            message: format!("bad peer id {text:?}: {error}"),
        })
    }

    pub fn flag(&self, setting: &Setting, default: bool) -> Result<bool, ConfigError> {
        match self.raw(setting).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some(other) => Err(ConfigError {
                variable: setting.env,
                message: format!("expected true or false, got {other:?}"),
            }),
        }
    }

    pub fn seconds(&self, setting: &Setting, default: f64) -> Result<Duration, ConfigError> {
        let Some(text) = self.raw(setting) else {
            return Ok(Duration::from_secs_f64(default));
        };
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() && value >= 0.0 => Ok(Duration::from_secs_f64(value)),
            _ => Err(ConfigError {
                variable: setting.env,
                message: format!("expected a number of seconds, got {text:?}"),
            }),
        }
    }

    pub fn count(&self, setting: &Setting, default: u32) -> Result<u32, ConfigError> {
        match self.raw(setting) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| ConfigError {
                variable: setting.env,
                message: format!("expected a whole number, got {text:?}"),
            }),
        }
    }

    pub fn network(&self) -> Result<String, ConfigError> {
        let network = self.raw(&NETWORK).unwrap_or("mainnet").to_ascii_lowercase();
        if NETWORKS.contains(&network.as_str()) {
            Ok(network)
        } else {
            Err(ConfigError {
                variable: NETWORK.env,
                message: format!(
                    "unknown network {network:?} (known: {})",
                    NETWORKS.join(", ")
                ),
            })
        }
    }
}

/// The peers speak TCP only and resolve no names: an address must start with `/ip4/A/tcp/P` or
/// `/ip6/A/tcp/P` (a circuit address starts with its relay's).
pub fn ip_tcp(addr: &Multiaddr) -> Result<(), String> {
    let mut parts = addr.iter();
    match (parts.next(), parts.next()) {
        (Some(Protocol::Ip4(_) | Protocol::Ip6(_)), Some(Protocol::Tcp(_))) => Ok(()),
        _ => Err(
            "expected /ip4/<addr>/tcp/<port> or /ip6/<addr>/tcp/<port> (TCP only, no DNS)".into(),
        ),
    }
}

/// The `--help` text of a binary: what it does, then every setting as `--flag / ENV: help`.
pub fn help(binary: &str, about: &str, settings: &[&Setting], defaults: &str) -> String {
    let mut text =
        format!("{binary}: {about}\n\nSettings (flag or environment variable; a flag wins):\n");
    for setting in settings {
        text.push_str(&format!(
            "  {:<24} {:<28} {}\n",
            setting.flag, setting.env, setting.help
        ));
    }
    text.push_str(&format!("\nDefaults: {defaults}\n"));
    text.push_str(
        "\nLogs: one JSON object a line on stdout ({\"ts\", \"node\", \"event\", ...}), human lines on stderr.\n\
         Exit codes: 0 success, 1 the run failed (see the last JSON event), 2 bad input (one line on stderr\n\
         naming the variable), 3 (client) the session's connection closed under it (session_lost).\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(env: &[(&str, &str)], args: &[&str]) -> Result<Source, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match Source::parse(
            &[&LISTEN, &REMOTE_PEER, &DCUTR, &NETWORK],
            |k| env.get(k).cloned(),
            args.iter().map(|s| s.to_string()),
        )? {
            Parsed::Run(source) => Ok(source),
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn flags_win_over_environment() {
        let source = parse(
            &[("LIBP2P_LISTEN_MULTIADDRS", "/ip4/0.0.0.0/tcp/1")],
            &["--listen", "/ip4/0.0.0.0/tcp/2"],
        )
        .expect("parse");
        let addrs = source.multiaddrs(&LISTEN, "").expect("addrs");
        assert_eq!(
            addrs,
            vec!["/ip4/0.0.0.0/tcp/2".parse::<Multiaddr>().expect("addr")]
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        let source = parse(
            &[
                ("LIBP2P_LISTEN_MULTIADDRS", "not-an-addr"),
                ("LIBP2P_REMOTE_PEER_ID", "xyz"),
            ],
            &[],
        )
        .expect("parse");
        assert_eq!(
            source.multiaddrs(&LISTEN, "").unwrap_err().variable,
            "LIBP2P_LISTEN_MULTIADDRS"
        );
        assert_eq!(
            source.peer_id(&REMOTE_PEER).unwrap_err().variable,
            "LIBP2P_REMOTE_PEER_ID"
        );
        let source = parse(
            &[("DCUTR_ENABLED", "maybe"), ("KASPA_NETWORK", "moonnet")],
            &[],
        )
        .expect("parse");
        assert!(source.flag(&DCUTR, true).is_err());
        assert!(source.network().unwrap_err().message.contains("devnet"));
    }

    #[test]
    fn only_ip_tcp_addresses() {
        let source =
            parse(&[("LIBP2P_LISTEN_MULTIADDRS", "/dns4/relay/tcp/4011")], &[]).expect("parse");
        let error = source.multiaddrs(&LISTEN, "").unwrap_err();
        assert_eq!(error.variable, "LIBP2P_LISTEN_MULTIADDRS");
        assert!(error.message.contains("TCP only"));
        let source =
            parse(&[("LIBP2P_LISTEN_MULTIADDRS", "/ip4/1.2.3.4/udp/1")], &[]).expect("parse");
        assert!(source.multiaddrs(&LISTEN, "").is_err());
        let source = parse(
            &[(
                "LIBP2P_LISTEN_MULTIADDRS",
                " /ip4/0.0.0.0/tcp/1 , /ip6/::/tcp/2 ,",
            )],
            &[],
        )
        .expect("parse");
        assert_eq!(source.multiaddrs(&LISTEN, "").expect("addrs").len(), 2);
    }

    #[test]
    fn bare_boolean_flag_means_true() {
        let source = parse(&[], &["--dcutr"]).expect("parse");
        assert!(source.flag(&DCUTR, false).expect("flag"));
        assert!(parse(&[], &["--bogus"]).is_err());
    }
}
