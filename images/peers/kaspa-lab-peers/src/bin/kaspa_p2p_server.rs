//! `kaspa_p2p_server`: a private Kaspa peer. Listens, reserves a slot on the relay, listens on its
//! `/p2p-circuit` address and serves the Kaspa P2P service on every inbound libp2p stream.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, relay};
use serde_json::json;
use tokio::sync::mpsc;

use kaspa_lab_peers::config::{DCUTR, IDLE, KEY_FILE, LISTEN, NETWORK, RELAYS, RUN_FOR, SEED};
use kaspa_lab_peers::events::emit;
use kaspa_lab_peers::identity;
use kaspa_lab_peers::kaspa::{self, KaspaIo, Local};
use kaspa_lab_peers::node::{self, or_exit, PeerBehaviourEvent};
use kaspa_lab_peers::streams::{self, is_relayed};

const BINARY: &str = "kaspa_p2p_server";

#[tokio::main]
async fn main() {
    let source = node::settings(
        "server",
        BINARY,
        "private Kaspa peer reachable through a circuit-relay-v2 reservation and DCUtR",
        &[
            &LISTEN, &RELAYS, &SEED, &KEY_FILE, &NETWORK, &DCUTR, &IDLE, &RUN_FOR,
        ],
    );
    let listen = or_exit(BINARY, source.multiaddrs(&LISTEN, "/ip4/0.0.0.0/tcp/4012"));
    let relay_addrs = or_exit(BINARY, source.required_multiaddrs(&RELAYS));
    let relays: HashMap<_, _> = or_exit(BINARY, node::relay_peers(&RELAYS, &relay_addrs))
        .into_iter()
        .collect();
    let network = or_exit(BINARY, source.network());
    let dcutr = or_exit(BINARY, source.flag(&DCUTR, true));
    let idle = or_exit(BINARY, source.seconds(&IDLE, 300.0));
    let run_for = or_exit(BINARY, source.seconds(&RUN_FOR, 0.0));
    let key = or_exit(BINARY, identity::load(&source));
    let me = key.public().to_peer_id();
    let mut swarm = match node::peer_swarm(key, dcutr, idle) {
        Ok(swarm) => swarm,
        Err(error) => node::shutdown(&format!("swarm: {error}"), 1),
    };
    node::log_peer_id(&me);
    emit(
        "config",
        json!({ "network": network, "dcutr_enabled": dcutr }),
    );

    let (incoming_tx, incoming_rx) = mpsc::channel::<KaspaIo>(64);
    let local = Local::new(network);
    tokio::spawn(async move {
        if let Err(error) = kaspa::serve(local, incoming_rx).await {
            emit("kaspa_server_failed", json!({ "error": error.to_string() }));
        }
    });

    node::listen_all(&mut swarm, BINARY, listen);
    let mut dialed_relays = false;
    let mut reserving: HashSet<libp2p::PeerId> = HashSet::new();
    let stop = node::termination();
    tokio::pin!(stop);
    let deadline = node::run_deadline(run_for);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut stop => node::shutdown("signal", 0),
            _ = &mut deadline => node::shutdown("run time elapsed", 0),
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    if is_relayed(&address) {
                        emit("circuit_listening", json!({ "addr": address.to_string() }));
                    } else {
                        emit("listening", json!({ "addr": address.to_string(), "peer_id": me.to_string() }));
                    }
                    // Dial the relay only once a listener is up, so the dial reuses the listening port and the
                    // relay observes the address DCUtR will punch to.
                    if !dialed_relays && relays.values().any(|r| node::reuses_port_towards(&address, r)) {
                        dialed_relays = true;
                        for addr in relays.values() {
                            if let Err(error) = swarm.dial(addr.clone()) {
                                emit("reservation_failed", json!({ "relay_addr": addr.to_string(), "reason": error.to_string() }));
                            }
                        }
                    }
                }
                SwarmEvent::NewExternalAddrCandidate { address } => {
                    emit("external_addr_candidate", json!({ "addr": address.to_string() }));
                }
                SwarmEvent::ExternalAddrConfirmed { address } => {
                    emit("external_addr_confirmed", json!({ "addr": address.to_string() }));
                }
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                    node::log_connection(&peer_id, connection_id, &endpoint);
                }
                SwarmEvent::ConnectionClosed { peer_id, connection_id, endpoint, cause, .. } => {
                    node::log_connection_closed(&peer_id, connection_id, &endpoint, cause.map(|c| c.to_string()));
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } if relays.contains_key(&peer) => {
                    emit("reservation_failed", json!({ "relay_peer_id": peer.to_string(), "reason": error.to_string() }));
                }
                SwarmEvent::ListenerClosed { addresses, reason, .. } if addresses.iter().any(is_relayed) => {
                    let reason = match reason { Ok(()) => "closed".to_string(), Err(e) => e.to_string() };
                    emit("reservation_failed", json!({ "reason": reason }));
                }
                SwarmEvent::ListenerError { error, .. } => {
                    emit("listener_error", json!({ "reason": error.to_string() }));
                }
                SwarmEvent::Behaviour(PeerBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    if let Some(relay_addr) = relays.get(&peer_id) {
                        emit("observed_addr", json!({ "addr": info.observed_addr.to_string(), "by": peer_id.to_string() }));
                        // The relay saw our NAT's public address: announce it so DCUtR has something to punch to.
                        // Not confirmed here: identify reports it as an external address *candidate*, which is
                        // what DCUtR offers the remote to punch to; confirming it first would hide it from DCUtR.
                        if reserving.insert(peer_id) {
                            if let Err(error) = swarm.listen_on(relay_addr.clone().with(Protocol::P2pCircuit)) {
                                emit("reservation_failed", json!({ "relay_peer_id": peer_id.to_string(), "reason": error.to_string() }));
                            }
                        }
                    }
                }
                SwarmEvent::Behaviour(PeerBehaviourEvent::RelayClient(event)) => match event {
                    relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal, .. } => {
                        if let Some(relay_addr) = relays.get(&relay_peer_id) {
                            emit("reservation_accepted", json!({
                                "relay_peer_id": relay_peer_id.to_string(),
                                "circuit_addr": node::circuit_addr(relay_addr, &me).to_string(),
                                "renewal": renewal,
                            }));
                        }
                    }
                    relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                        emit("inbound_circuit", json!({ "src_peer_id": src_peer_id.to_string() }));
                    }
                    relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                        emit("outbound_circuit", json!({ "relay_peer_id": relay_peer_id.to_string() }));
                    }
                },
                SwarmEvent::Behaviour(PeerBehaviourEvent::Dcutr(event)) => {
                    let remote = event.result.as_ref().ok()
                        .and_then(|id| swarm.behaviour().kaspa.connection(*id))
                        .map(|c| c.remote_addr.clone());
                    node::log_dcutr(&event, remote.as_ref());
                }
                SwarmEvent::Behaviour(PeerBehaviourEvent::Kaspa(streams::Event::Inbound(info, stream))) => {
                    let handed_over = incoming_tx.send(KaspaIo::new(stream, info)).await;
                    if handed_over.is_err() {
                        node::shutdown("kaspa service stopped", 1);
                    }
                }
                _ => {}
            }
        }
    }
}
