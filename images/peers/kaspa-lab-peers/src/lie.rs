//! The lying-peer control (`LAB_LIE_DIRECT=true`): a negative control for the lab's ground truth and nothing
//! else. Never set it for a real run.
//!
//! Both private peers run without DCUtR (so no direct flow can exist anywhere) and run the Kaspa session over
//! the relayed connection, but log it as if DCUtR had upgraded it: [`claim_direct`] rewrites the relayed
//! connection's facts ([`streams::Behaviour::disguise`]: `relayed: false`, a made-up `remote_addr` nobody in
//! the lab has) and logs the direct connection and the DCUtR success a real run would have logged, with the
//! relayed connection's id. From then on every `handshake_step`, `handshake_complete`, `kaspa_ping`,
//! `kaspa_pong`, `session_connection`, `connection_closed` and `session_lost` of that connection carries the
//! lie. A chain that reads only these logs says "direct"; the routers' conntrack tables (no direct flow) and
//! the relay (its circuit carries the session until it ends) say otherwise.
//!
//! What stays true: the `connection_established {relayed: true}` of the circuit (logged before the lie
//! starts), `config` (`lie_direct: true`, `dcutr_enabled: false`), the relay's log, and stderr.

use libp2p::swarm::ConnectionId;
use libp2p::Multiaddr;
use serde_json::json;

use crate::config::{ConfigError, Setting, Source, DCUTR, LIE_DIRECT};
use crate::events::emit;
use crate::node;
use crate::streams::{self, ConnectionInfo};

/// The server address the lying client claims its direct connection goes to.
pub const CLIENT_CLAIMS: &str = "/ip4/198.18.255.254/tcp/4012";
/// The client address the lying server claims its direct connection comes from.
pub const SERVER_CLAIMS: &str = "/ip4/198.18.255.253/tcp/4013";

/// The two switches the control decides: whether to lie, and whether DCUtR is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switches {
    pub lie: bool,
    pub dcutr: bool,
}

/// Reads `LAB_LIE_DIRECT` and `DCUTR_ENABLED`. The control turns DCUtR off; `DCUTR_ENABLED=true` with it, or
/// any of `also_refused` set true (the client's `ALLOW_RELAY_FALLBACK`), is an error naming `LAB_LIE_DIRECT`.
pub fn switches(source: &Source, also_refused: &[&Setting]) -> Result<Switches, ConfigError> {
    let lie = source.flag(&LIE_DIRECT, false)?;
    if !lie {
        return Ok(Switches {
            lie,
            dcutr: source.flag(&DCUTR, true)?,
        });
    }
    let refuse = |setting: &Setting, why: &str| ConfigError {
        variable: LIE_DIRECT.env,
        message: format!(
            "the lying-peer control cannot be combined with {}=true: {why}",
            setting.env
        ),
    };
    if source.flag(&DCUTR, false)? {
        return Err(refuse(
            &DCUTR,
            "it runs without DCUtR so that no direct flow can exist (leave DCUTR_ENABLED unset or false)",
        ));
    }
    for setting in also_refused {
        if source.flag(setting, false)? {
            return Err(refuse(
                setting,
                "it always runs over the relay, and an honest fallback would look the same",
            ));
        }
    }
    Ok(Switches { lie, dcutr: false })
}

/// Disguises the relayed connection `conn` as a direct one to `claimed` and logs what a real DCUtR upgrade
/// logs: `connection_established {relayed: false}` and `dcutr` ok, both naming `conn`. Returns the disguised
/// facts (`None` if `conn` is not open).
pub fn claim_direct(
    kaspa: &mut streams::Behaviour,
    conn: ConnectionId,
    claimed: &str,
) -> Option<ConnectionInfo> {
    let claimed: Multiaddr = claimed.parse().ok()?;
    let info = kaspa.disguise(conn, &claimed)?;
    emit(
        "connection_established",
        json!({
            "peer_id": info.peer_id.to_string(),
            "remote_addr": info.remote_addr.to_string(),
            "relayed": false,
            "connection_id": info.connection_number(),
            "endpoint": "dialer",
            "to_relay": false,
        }),
    );
    node::log_dcutr_ok(&info.peer_id, conn, Some(&info.remote_addr));
    Some(info)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{Parsed, FALLBACK};

    fn source(env: &[(&str, &str)]) -> Source {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match Source::parse(
            &[&LIE_DIRECT, &DCUTR, &FALLBACK],
            |k| env.get(k).cloned(),
            std::iter::empty(),
        ) {
            Ok(Parsed::Run(source)) => source,
            _ => panic!("parse"),
        }
    }

    #[test]
    fn without_the_switch_dcutr_follows_its_own_setting() {
        let honest = switches(&source(&[]), &[&FALLBACK]).expect("switches");
        assert_eq!(
            honest,
            Switches {
                lie: false,
                dcutr: true
            }
        );
        let off = switches(&source(&[("DCUTR_ENABLED", "false")]), &[]).expect("switches");
        assert!(!off.lie && !off.dcutr);
        // An honest fallback is no conflict.
        assert!(switches(&source(&[("ALLOW_RELAY_FALLBACK", "true")]), &[&FALLBACK]).is_ok());
    }

    #[test]
    fn the_liar_runs_without_dcutr() {
        for env in [
            vec![("LAB_LIE_DIRECT", "true")],
            vec![("LAB_LIE_DIRECT", "yes"), ("DCUTR_ENABLED", "false")],
            vec![("LAB_LIE_DIRECT", "1"), ("ALLOW_RELAY_FALLBACK", "false")],
        ] {
            assert_eq!(
                switches(&source(&env), &[&FALLBACK]).expect("switches"),
                Switches {
                    lie: true,
                    dcutr: false
                },
                "{env:?}"
            );
        }
    }

    #[test]
    fn ambiguous_combinations_are_refused_naming_the_switch() {
        for (env, names) in [
            (
                vec![("LAB_LIE_DIRECT", "true"), ("DCUTR_ENABLED", "true")],
                "DCUTR_ENABLED",
            ),
            (
                vec![("LAB_LIE_DIRECT", "true"), ("ALLOW_RELAY_FALLBACK", "on")],
                "ALLOW_RELAY_FALLBACK",
            ),
        ] {
            let error = switches(&source(&env), &[&FALLBACK]).expect_err("refused");
            assert_eq!(error.variable, "LAB_LIE_DIRECT");
            assert!(error.message.contains(names), "{error}");
        }
        assert_eq!(
            switches(&source(&[("LAB_LIE_DIRECT", "perhaps")]), &[])
                .expect_err("bad")
                .variable,
            "LAB_LIE_DIRECT"
        );
    }

    #[test]
    fn the_claimed_addresses_are_plain_tcp_addresses() {
        for claimed in [CLIENT_CLAIMS, SERVER_CLAIMS] {
            let addr: Multiaddr = claimed.parse().expect("addr");
            assert!(crate::config::ip_tcp(&addr).is_ok());
            assert!(!streams::is_relayed(&addr));
        }
    }
}
