//! Which connection a Kaspa session runs on, as both private peers log it (`session_connection`), so a chain
//! can tie the handshake to the DCUtR success whichever side's SYN made the direct connection:
//!
//! - the client logs it when its session starts: its own DCUtR connection (`dcutr`, the same id as its
//!   `dcutr` ok), the server's DCUtR dial that reached its listener (`inbound`; the server's log has the
//!   `dcutr` ok), or the relayed connection on fallback (`relay`);
//! - the server logs it when the first Kaspa stream of a connection arrives (the client's handshake stream):
//!   [`Source::of_arrival`] says whether that is the connection its own `dcutr` ok named, one the client dialled
//!   (`inbound`: the client's DCUtR dial reached the server's listener), or the relay circuit.
//!
//! Every `handshake_step`, `handshake_complete`, `kaspa_ping` and `kaspa_pong` of the session then carries
//! the same `connection_id` and `relayed`.

use std::collections::HashSet;

use libp2p::swarm::ConnectionId;
use serde_json::json;

use crate::events::emit;
use crate::streams::ConnectionInfo;

/// Where the connection a session runs on came from (the `source` fact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Our own DCUtR dial: our `dcutr` ok names the same connection.
    Dcutr,
    /// A direct connection the remote dialled to our listener (its DCUtR dial; its log has the `dcutr` ok).
    Inbound,
    /// The relay circuit (the client's fallback; the server cannot tell a fallback from anything else).
    Relay,
    /// A direct connection we dialled that no `dcutr` ok of ours named (server only; not expected).
    Other,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dcutr => "dcutr",
            Self::Inbound => "inbound",
            Self::Relay => "relay",
            Self::Other => "other",
        }
    }

    /// The server's view of the connection a client's session arrived on, given the connections its own
    /// DCUtR reported ok.
    pub fn of_arrival(info: &ConnectionInfo, own_dcutr: &HashSet<ConnectionId>) -> Self {
        if info.relayed {
            Self::Relay
        } else if own_dcutr.contains(&info.connection_id) {
            Self::Dcutr
        } else if !info.dialer {
            Self::Inbound
        } else {
            Self::Other
        }
    }
}

/// Logs `session_connection`: the connection the session runs on, and where it came from.
pub fn log_session_connection(info: &ConnectionInfo, source: Source) {
    emit(
        "session_connection",
        json!({
            "peer_id": info.peer_id.to_string(),
            "connection_id": info.connection_number(),
            "source": source.as_str(),
            "remote_addr": info.remote_addr.to_string(),
            "relayed": info.relayed,
        }),
    );
}

#[cfg(test)]
mod tests {
    use libp2p::PeerId;

    use super::*;

    fn info(n: usize, relayed: bool, dialer: bool) -> ConnectionInfo {
        ConnectionInfo {
            peer_id: PeerId::random(),
            connection_id: ConnectionId::new_unchecked(n),
            remote_addr: "/ip4/198.18.0.3/tcp/4013".parse().expect("addr"),
            relayed,
            dialer,
        }
    }

    #[test]
    fn the_server_names_its_own_dcutr_connection_dcutr() {
        let own = HashSet::from([ConnectionId::new_unchecked(5)]);
        assert_eq!(
            Source::of_arrival(&info(5, false, true), &own),
            Source::Dcutr
        );
        // Another connection we dialled is not ours from DCUtR, even though it is direct.
        assert_eq!(
            Source::of_arrival(&info(6, false, true), &own),
            Source::Other
        );
    }

    #[test]
    fn a_connection_the_client_dialled_is_inbound_and_a_circuit_is_the_relay() {
        let own = HashSet::from([ConnectionId::new_unchecked(5)]);
        assert_eq!(
            Source::of_arrival(&info(7, false, false), &own),
            Source::Inbound
        );
        assert_eq!(
            Source::of_arrival(&info(8, true, false), &own),
            Source::Relay
        );
        // A circuit stays the relay even if DCUtR named its id (it never does: DCUtR names direct ones).
        let odd = HashSet::from([ConnectionId::new_unchecked(8)]);
        assert_eq!(
            Source::of_arrival(&info(8, true, false), &odd),
            Source::Relay
        );
    }
}
