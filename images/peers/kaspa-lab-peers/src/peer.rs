//! What the two private peers (server and client) share: the swarm with its relays, dialling the relays
//! once a listen address makes the dial reuse the listening port, and the swarm events both log the same
//! way (listening, external address candidates, connections, the relay's observation of us, DCUtR
//! outcomes). [`Peer::next`] logs those facts and hands the binary each event in the form it acts on.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::identity::Keypair;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{dcutr, identify, relay, Multiaddr, PeerId, Swarm};
use serde_json::json;
use tokio::time::Sleep;

use crate::events::emit;
use crate::node::{self, PeerBehaviour, PeerBehaviourEvent};
use crate::streams::{self, is_relayed};

/// How long a peer waits for a listen address that makes dials reuse the listening port before it dials the
/// relays anyway (from an ephemeral port, which DCUtR can rarely punch to).
pub const PORT_REUSE_GRACE: Duration = Duration::from_secs(2);

/// A swarm event after [`Peer`] logged what both private peers log about it.
#[derive(Debug)]
pub enum PeerEvent {
    /// The relays were dialled just now (from the listening port, or after [`PORT_REUSE_GRACE`]).
    RelaysDialled,
    Established {
        peer_id: PeerId,
        connection_id: ConnectionId,
        endpoint: ConnectedPoint,
        to_relay: bool,
    },
    Closed {
        peer_id: PeerId,
        connection_id: ConnectionId,
        /// libp2p's reason, if it gave one (`None`: closed on purpose, e.g. by us).
        cause: Option<String>,
    },
    /// A dial to one of our relays failed (not logged here: only the server retries, and says when).
    RelayUnreachable {
        relay: PeerId,
        reason: String,
    },
    /// A dial to any other peer failed.
    DialFailed {
        peer_id: PeerId,
        reason: String,
    },
    ListenerClosed {
        addresses: Vec<Multiaddr>,
        reason: Result<(), std::io::Error>,
    },
    ListenerError {
        reason: String,
    },
    /// A relay's identify arrived; `observed_addr` is logged. The observation becomes an external address
    /// *candidate* by itself, which is what DCUtR offers the remote to punch to; it is deliberately not
    /// confirmed here: confirming it would hide it from DCUtR.
    RelayIdentified {
        relay: PeerId,
    },
    /// A DCUtR outcome, logged with the direct connection's remote address.
    Dcutr(dcutr::Event),
    Relay(relay::client::Event),
    Kaspa(streams::Event),
}

/// Dial-after-listen. libp2p-tcp reuses a listening port only once a listener of the target's address family
/// and loopback-ness is up; dialled earlier, the relay would observe a port nobody can punch to.
enum RelayDial {
    /// No listen address yet.
    Waiting,
    /// Listening, but on no address that reuses the port towards a relay: dial when this fires.
    Grace(Pin<Box<Sleep>>),
    Dialled,
}

/// A private peer: its swarm, its own peer id and its relays (peer id → multiaddr ending in `/p2p/<relay>`).
pub struct Peer {
    pub swarm: Swarm<PeerBehaviour>,
    pub me: PeerId,
    relays: HashMap<PeerId, Multiaddr>,
    relay_dial: RelayDial,
}

impl Peer {
    fn new(swarm: Swarm<PeerBehaviour>, relays: HashMap<PeerId, Multiaddr>) -> Self {
        Self {
            me: *swarm.local_peer_id(),
            swarm,
            relays,
            relay_dial: RelayDial::Waiting,
        }
    }

    /// Builds the swarm (TCP, relay client, DCUtR unless `dcutr` is false) and logs `peer_id`; a swarm that
    /// cannot be built ends the run with exit code 1. Listening is up to the caller.
    pub fn start(
        key: Keypair,
        dcutr: bool,
        idle: Duration,
        relays: HashMap<PeerId, Multiaddr>,
    ) -> Self {
        let relay_addrs: Vec<Multiaddr> = relays.values().cloned().collect();
        let swarm = match node::peer_swarm(key, dcutr, idle, &relay_addrs) {
            Ok(swarm) => swarm,
            Err(error) => node::shutdown(&format!("swarm: {error}"), 1),
        };
        node::log_peer_id(swarm.local_peer_id());
        Self::new(swarm, relays)
    }

    pub fn relays(&self) -> &HashMap<PeerId, Multiaddr> {
        &self.relays
    }

    /// The next event the binary acts on; everything both peers log is logged on the way.
    /// Cancel-safe: nothing is lost when the future is dropped before it resolves.
    pub async fn next(&mut self) -> PeerEvent {
        loop {
            let Self {
                swarm, relay_dial, ..
            } = self;
            let event = tokio::select! {
                () = grace(relay_dial) => None,
                event = swarm.select_next_some() => Some(event),
            };
            let digested = match event {
                None => Some(self.grace_elapsed()),
                Some(event) => self.digest(event),
            };
            if let Some(event) = digested {
                return event;
            }
        }
    }

    /// Dials one relay; a dial that cannot even start is logged as `relay_dial_failed`.
    pub fn dial_relay(&mut self, relay: &PeerId) {
        if let Some(addr) = self.relays.get(relay) {
            if let Err(error) = self.swarm.dial(addr.clone()) {
                log_relay_dial_failed(relay, addr, &error.to_string(), None);
            }
        }
    }

    fn dial_relays(&mut self) -> PeerEvent {
        self.relay_dial = RelayDial::Dialled;
        let relays: Vec<PeerId> = self.relays.keys().copied().collect();
        for relay in &relays {
            self.dial_relay(relay);
        }
        PeerEvent::RelaysDialled
    }

    fn grace_elapsed(&mut self) -> PeerEvent {
        emit(
            "port_reuse_unavailable",
            json!({
                "reason": "no listen address of the relays' address family and scope: dialling them from an ephemeral port",
            }),
        );
        self.dial_relays()
    }

    fn listening(&mut self, address: &Multiaddr) -> Option<PeerEvent> {
        if is_relayed(address) {
            emit("circuit_listening", json!({ "addr": address.to_string() }));
        } else {
            emit(
                "listening",
                json!({ "addr": address.to_string(), "peer_id": self.me.to_string() }),
            );
        }
        if matches!(self.relay_dial, RelayDial::Dialled) {
            return None;
        }
        if self
            .relays
            .values()
            .any(|relay| node::reuses_port_towards(address, relay))
        {
            return Some(self.dial_relays());
        }
        if matches!(self.relay_dial, RelayDial::Waiting) {
            self.relay_dial = RelayDial::Grace(Box::pin(tokio::time::sleep(PORT_REUSE_GRACE)));
        }
        None
    }

    fn digest(&mut self, event: SwarmEvent<PeerBehaviourEvent>) -> Option<PeerEvent> {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => self.listening(&address),
            SwarmEvent::NewExternalAddrCandidate { address } => {
                emit(
                    "external_addr_candidate",
                    json!({ "addr": address.to_string() }),
                );
                None
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                emit(
                    "external_addr_confirmed",
                    json!({ "addr": address.to_string() }),
                );
                None
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let to_relay = self.relays.contains_key(&peer_id);
                node::log_connection(&peer_id, connection_id, &endpoint, to_relay);
                Some(PeerEvent::Established {
                    peer_id,
                    connection_id,
                    endpoint,
                    to_relay,
                })
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                cause,
                ..
            } => {
                let cause = cause.map(|c| c.to_string());
                let to_relay = self.relays.contains_key(&peer_id);
                // A connection the lying-peer control disguised keeps its lie to the end.
                let relayed = endpoint.is_relayed()
                    && !self.swarm.behaviour().kaspa.is_disguised(connection_id);
                node::log_connection_closed(
                    &peer_id,
                    connection_id,
                    relayed,
                    to_relay,
                    cause.clone(),
                );
                Some(PeerEvent::Closed {
                    peer_id,
                    connection_id,
                    cause,
                })
            }
            SwarmEvent::IncomingConnectionError {
                connection_id,
                local_addr,
                send_back_addr,
                error,
                peer_id,
            } => {
                node::log_incoming_connection_error(
                    connection_id,
                    &local_addr,
                    &send_back_addr,
                    peer_id.as_ref(),
                    &error,
                );
                None
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id: Some(peer_id),
                error,
            } => {
                let reason = error.to_string();
                let to_relay = self.relays.contains_key(&peer_id);
                if !to_relay {
                    node::log_outgoing_connection_error(connection_id, &peer_id, &error);
                }
                Some(if to_relay {
                    PeerEvent::RelayUnreachable {
                        relay: peer_id,
                        reason,
                    }
                } else {
                    PeerEvent::DialFailed { peer_id, reason }
                })
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => Some(PeerEvent::ListenerClosed { addresses, reason }),
            SwarmEvent::ListenerError { error, .. } => Some(PeerEvent::ListenerError {
                reason: error.to_string(),
            }),
            SwarmEvent::Behaviour(event) => self.behaviour_event(event),
            _ => None,
        }
    }

    fn behaviour_event(&mut self, event: PeerBehaviourEvent) -> Option<PeerEvent> {
        match event {
            PeerBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })
                if self.relays.contains_key(&peer_id) =>
            {
                emit(
                    "observed_addr",
                    json!({ "addr": info.observed_addr.to_string(), "by": peer_id.to_string() }),
                );
                Some(PeerEvent::RelayIdentified { relay: peer_id })
            }
            PeerBehaviourEvent::Dcutr(event) => {
                let remote_addr = event
                    .result
                    .as_ref()
                    .ok()
                    .and_then(|id| self.swarm.behaviour().kaspa.connection(*id))
                    .map(|c| c.remote_addr.clone());
                node::log_dcutr(&event, remote_addr.as_ref());
                Some(PeerEvent::Dcutr(event))
            }
            PeerBehaviourEvent::RelayClient(event) => Some(PeerEvent::Relay(event)),
            PeerBehaviourEvent::Kaspa(event) => Some(PeerEvent::Kaspa(event)),
            _ => None,
        }
    }
}

/// Resolves when the port-reuse grace is over; never while there is none.
async fn grace(relay_dial: &mut RelayDial) {
    match relay_dial {
        RelayDial::Grace(sleep) => sleep.as_mut().await,
        _ => std::future::pending().await,
    }
}

/// `relay_dial_failed`: the relay could not be reached (both peers; the server adds when it retries).
/// A relay that was reached but refused or dropped the reservation is `reservation_failed` instead.
pub fn log_relay_dial_failed(
    relay: &PeerId,
    relay_addr: &Multiaddr,
    reason: &str,
    retry_in: Option<Duration>,
) {
    let mut facts = json!({
        "relay_peer_id": relay.to_string(),
        "relay_addr": relay_addr.to_string(),
        "reason": reason,
    });
    if let Some(retry_in) = retry_in {
        facts["retry_in_secs"] = json!(retry_in.as_secs());
    }
    emit("relay_dial_failed", facts);
}
