//! `kaspa_p2p_server`: a private Kaspa peer. Listens, reserves a slot on the relay, listens on its
//! `/p2p-circuit` address and serves the Kaspa P2P service on every inbound libp2p stream.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, relay, Multiaddr, PeerId};
use serde_json::json;
use tokio::sync::mpsc;

use kaspa_lab_peers::config::{
    ConfigError, DCUTR, IDLE, KEY_FILE, LISTEN, NETWORK, RELAYS, RUN_FOR, SEED,
};
use kaspa_lab_peers::events::emit;
use kaspa_lab_peers::identity;
use kaspa_lab_peers::kaspa::{self, KaspaIo, Local};
use kaspa_lab_peers::node::{self, or_exit, PeerBehaviourEvent};
use kaspa_lab_peers::streams::{self, is_relayed};

const BINARY: &str = "kaspa_p2p_server";
/// A relay connection without the relay's identify after this long: request the reservation anyway.
const IDENTIFY_GRACE: Duration = Duration::from_secs(3);
/// Back-off between attempts to regain a lost relay or reservation.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(16);

#[tokio::main]
async fn main() {
    let source = node::settings(
        "server",
        BINARY,
        "private Kaspa peer reachable through a circuit-relay-v2 reservation and DCUtR",
        &[
            &LISTEN, &RELAYS, &SEED, &KEY_FILE, &NETWORK, &DCUTR, &IDLE, &RUN_FOR,
        ],
        "listen /ip4/0.0.0.0/tcp/4012, network mainnet, DCUtR on, identity random, idle timeout 300 s,\n  run until signalled.",
    );
    // As in the PoC, LIBP2P_LISTEN_MULTIADDRS may also name relay circuits (`<relay>/p2p-circuit`): their
    // relays are added to LIBP2P_RELAY_MULTIADDRS.
    let (circuits, listen): (Vec<_>, Vec<_>) =
        or_exit(BINARY, source.multiaddrs(&LISTEN, "/ip4/0.0.0.0/tcp/4012"))
            .into_iter()
            .partition(is_relayed);
    let mut relay_addrs = or_exit(BINARY, source.multiaddrs(&RELAYS, ""));
    relay_addrs.extend(circuits.iter().filter_map(node::relay_part));
    if relay_addrs.is_empty() {
        node::bad_input(
            BINARY,
            &ConfigError {
                variable: RELAYS.env,
                message: "is required (or a /p2p-circuit address in LIBP2P_LISTEN_MULTIADDRS)"
                    .into(),
            },
        );
    }
    if listen.is_empty() {
        node::bad_input(
            BINARY,
            &ConfigError {
                variable: LISTEN.env,
                message: "needs at least one /ip4 or /ip6 TCP address to listen on".into(),
            },
        );
    }
    let relays: HashMap<_, _> = or_exit(BINARY, node::relay_peers(&RELAYS, &relay_addrs))
        .into_iter()
        .collect();
    let network = or_exit(BINARY, source.network());
    let dcutr = or_exit(BINARY, source.flag(&DCUTR, true));
    let idle = or_exit(BINARY, source.seconds(&IDLE, 300.0));
    let run_for = or_exit(BINARY, source.seconds(&RUN_FOR, 0.0));
    let key = or_exit(BINARY, identity::load(&source));
    let me = key.public().to_peer_id();
    let relay_list: Vec<_> = relays.values().cloned().collect();
    let mut swarm = match node::peer_swarm(key, dcutr, idle, &relay_list) {
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
    let mut reserving: HashSet<PeerId> = HashSet::new();
    let stop = node::termination();
    tokio::pin!(stop);
    let deadline = node::run_deadline(run_for);
    tokio::pin!(deadline);
    let reuse_grace = node::run_deadline(Duration::ZERO);
    tokio::pin!(reuse_grace);
    let mut grace_armed = false;
    // Re-dials lost relays and requests missing reservations (also when a relay's identify never comes).
    let retry = node::run_deadline(Duration::ZERO);
    tokio::pin!(retry);
    let mut retry_armed = false;
    let mut backoff = RETRY_FIRST;
    loop {
        tokio::select! {
            _ = &mut stop => node::shutdown("signal", 0),
            _ = &mut deadline => node::shutdown("run time elapsed", 0),
            _ = &mut reuse_grace, if grace_armed && !dialed_relays => {
                dialed_relays = true;
                emit("port_reuse_unavailable", json!({
                    "reason": "no listen address of the relays' address family and scope: dialling them from an ephemeral port",
                }));
                node::dial_relays(&mut swarm, &relays, "reservation_failed");
            }
            _ = &mut retry, if retry_armed => {
                retry_armed = false;
                for (peer, addr) in &relays {
                    if !swarm.is_connected(peer) {
                        emit("relay_redial", json!({ "relay_peer_id": peer.to_string(), "relay_addr": addr.to_string() }));
                        if let Err(error) = swarm.dial(addr.clone()) {
                            emit("reservation_failed", json!({ "relay_peer_id": peer.to_string(), "reason": error.to_string() }));
                        }
                    } else if !reserving.contains(peer) {
                        reserve(&mut swarm, &mut reserving, peer, addr);
                    }
                }
            }
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
                        node::dial_relays(&mut swarm, &relays, "reservation_failed");
                    } else if !grace_armed {
                        grace_armed = true;
                        reuse_grace.as_mut().reset(tokio::time::Instant::now() + node::PORT_REUSE_GRACE);
                    }
                }
                SwarmEvent::NewExternalAddrCandidate { address } => {
                    emit("external_addr_candidate", json!({ "addr": address.to_string() }));
                }
                SwarmEvent::ExternalAddrConfirmed { address } => {
                    emit("external_addr_confirmed", json!({ "addr": address.to_string() }));
                }
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                    let to_relay = relays.contains_key(&peer_id);
                    node::log_connection(&peer_id, connection_id, &endpoint, to_relay);
                    if to_relay && !reserving.contains(&peer_id) {
                        // The reservation is normally requested when the relay's identify arrives; if it never
                        // does, request it anyway.
                        retry_armed = true;
                        retry.as_mut().reset(tokio::time::Instant::now() + IDENTIFY_GRACE);
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, connection_id, endpoint, cause, .. } => {
                    node::log_connection_closed(&peer_id, connection_id, &endpoint, cause.map(|c| c.to_string()));
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } if relays.contains_key(&peer) => {
                    emit("reservation_failed", json!({
                        "relay_peer_id": peer.to_string(),
                        "reason": format!("cannot reach the relay: {error}"),
                        "retry_in_secs": backoff.as_secs(),
                    }));
                    retry_armed = true;
                    retry.as_mut().reset(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                SwarmEvent::ListenerClosed { addresses, reason, .. } if addresses.iter().any(is_relayed) => {
                    let reason = match reason { Ok(()) => "reservation closed".to_string(), Err(e) => e.to_string() };
                    let relay = addresses.iter().find_map(|a| node::relay_part(a).as_ref().and_then(node::last_peer));
                    if let Some(peer) = relay {
                        reserving.remove(&peer);
                    }
                    emit("reservation_failed", json!({
                        "relay_peer_id": relay.map(|p| p.to_string()),
                        "reason": reason,
                        "retry_in_secs": backoff.as_secs(),
                    }));
                    retry_armed = true;
                    retry.as_mut().reset(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(RETRY_MAX);
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
                        if !reserving.contains(&peer_id) {
                            reserve(&mut swarm, &mut reserving, &peer_id, relay_addr);
                        }
                    }
                }
                SwarmEvent::Behaviour(PeerBehaviourEvent::RelayClient(event)) => match event {
                    relay::client::Event::ReservationReqAccepted { relay_peer_id, renewal, .. } => {
                        if let Some(relay_addr) = relays.get(&relay_peer_id) {
                            backoff = RETRY_FIRST;
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

/// Requests a reservation on `relay` by listening on its circuit address.
fn reserve(
    swarm: &mut libp2p::Swarm<node::PeerBehaviour>,
    reserving: &mut HashSet<PeerId>,
    relay: &PeerId,
    relay_addr: &Multiaddr,
) {
    reserving.insert(*relay);
    emit(
        "reservation_requested",
        json!({ "relay_peer_id": relay.to_string() }),
    );
    if let Err(error) = swarm.listen_on(relay_addr.clone().with(Protocol::P2pCircuit)) {
        reserving.remove(relay);
        emit(
            "reservation_failed",
            json!({ "relay_peer_id": relay.to_string(), "reason": error.to_string() }),
        );
    }
}
