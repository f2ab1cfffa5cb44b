//! `kaspa_p2p_relay`: a public circuit-relay-v2 server with identify and ping.

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, relay};
use serde_json::json;

use kaspa_lab_peers::config::{IDLE, KEY_FILE, LISTEN, RUN_FOR, SEED};
use kaspa_lab_peers::events::emit;
use kaspa_lab_peers::identity;
use kaspa_lab_peers::node::{self, or_exit, RelayBehaviourEvent};

const BINARY: &str = "kaspa_p2p_relay";

#[tokio::main]
async fn main() {
    let source = node::settings(
        "relay",
        BINARY,
        "public libp2p circuit-relay-v2 relay for private Kaspa peers",
        &[&LISTEN, &SEED, &KEY_FILE, &IDLE, &RUN_FOR],
        "listen /ip4/0.0.0.0/tcp/4011, identity random, idle timeout 300 s, run until signalled.",
    );
    let listen = or_exit(BINARY, source.multiaddrs(&LISTEN, "/ip4/0.0.0.0/tcp/4011"));
    let idle = or_exit(BINARY, source.seconds(&IDLE, 300.0));
    let run_for = or_exit(BINARY, source.seconds(&RUN_FOR, 0.0));
    let key = or_exit(BINARY, identity::load(&source));
    let peer_id = key.public().to_peer_id();
    let mut swarm = match node::relay_swarm(key, idle) {
        Ok(swarm) => swarm,
        Err(error) => node::shutdown(&format!("swarm: {error}"), 1),
    };
    node::log_peer_id(&peer_id);
    node::listen_all(&mut swarm, BINARY, listen);
    let stop = node::stop_reason(run_for);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            reason = &mut stop => node::shutdown(reason, 0),
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    // Reservations hand out the relay's external addresses: the concrete ones it listens on.
                    swarm.add_external_address(address.clone());
                    emit("listening", json!({ "addr": address.to_string(), "peer_id": peer_id.to_string() }));
                }
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                    node::log_connection(&peer_id, connection_id, &endpoint, false);
                }
                SwarmEvent::ConnectionClosed { peer_id, connection_id, endpoint, cause, .. } => {
                    node::log_connection_closed(&peer_id, connection_id, endpoint.is_relayed(), false, cause.map(|c| c.to_string()));
                }
                SwarmEvent::Behaviour(RelayBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    emit("identify_received", json!({ "peer_id": peer_id.to_string(), "agent": info.agent_version }));
                }
                SwarmEvent::Behaviour(RelayBehaviourEvent::Relay(event)) => log_relay(event),
                _ => {}
            }
        }
    }
}

fn log_relay(event: relay::Event) {
    match event {
        relay::Event::ReservationReqAccepted {
            src_peer_id,
            renewed,
        } => {
            emit(
                "reservation_req_accepted",
                json!({ "src_peer_id": src_peer_id.to_string(), "renewed": renewed }),
            );
        }
        relay::Event::ReservationReqDenied { src_peer_id, .. } => {
            emit(
                "reservation_req_denied",
                json!({ "src_peer_id": src_peer_id.to_string() }),
            );
        }
        relay::Event::ReservationTimedOut { src_peer_id } => {
            emit(
                "reservation_timed_out",
                json!({ "src_peer_id": src_peer_id.to_string() }),
            );
        }
        relay::Event::CircuitReqAccepted {
            src_peer_id,
            dst_peer_id,
        } => {
            emit(
                "circuit_accepted",
                json!({ "src_peer_id": src_peer_id.to_string(), "dst_peer_id": dst_peer_id.to_string() }),
            );
        }
        relay::Event::CircuitReqDenied {
            src_peer_id,
            dst_peer_id,
            ..
        } => {
            emit(
                "circuit_denied",
                json!({ "src_peer_id": src_peer_id.to_string(), "dst_peer_id": dst_peer_id.to_string() }),
            );
        }
        relay::Event::CircuitClosed {
            src_peer_id,
            dst_peer_id,
            error,
        } => {
            emit(
                "circuit_closed",
                json!({
                    "src_peer_id": src_peer_id.to_string(),
                    "dst_peer_id": dst_peer_id.to_string(),
                    "error": error.map(|e| e.to_string()),
                }),
            );
        }
        _ => {}
    }
}
