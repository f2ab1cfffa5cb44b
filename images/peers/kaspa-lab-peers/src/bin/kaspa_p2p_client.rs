//! `kaspa_p2p_client`: a private Kaspa peer that reaches a private server through the relay, lets DCUtR
//! upgrade to a direct connection, runs the Kaspa handshake on that direct connection, keeps a ping/pong
//! session for a while and exits 0. Without a direct connection it exits 1, or with
//! `--allow-relay-fallback` runs the handshake over the relay (the lab then reports `relayed`).

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU8;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, Multiaddr, PeerId};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use kaspa_lab_peers::config::{
    ConfigError, DCUTR, DIRECT_DEADLINE, FALLBACK, IDLE, KEY_FILE, LISTEN, NETWORK, PING_STREAMS,
    RELAYS, REMOTE_ADDRS, REMOTE_PEER, SEED, SESSION,
};
use kaspa_lab_peers::events::emit;
use kaspa_lab_peers::identity;
use kaspa_lab_peers::kaspa::{self, KaspaIo, Local};
use kaspa_lab_peers::node::{self, or_exit, PeerBehaviourEvent};
use kaspa_lab_peers::streams::{self, is_relayed};

const BINARY: &str = "kaspa_p2p_client";
/// How long to wait for the relay's identify (our observed address) before dialling the server anyway.
const OBSERVE_GRACE: Duration = Duration::from_secs(5);
/// No relayed connection to the server by then: the run has failed.
const REACH_DEADLINE: Duration = Duration::from_secs(30);

type StreamRequest = (ConnectionId, oneshot::Sender<Result<KaspaIo, String>>);

struct Plan {
    local: Local,
    session: Duration,
    ping_streams: u32,
}

#[tokio::main]
async fn main() {
    let source = node::settings(
        "client",
        BINARY,
        "private Kaspa peer that dials a private server through a relay and punches a direct path with DCUtR",
        &[
            &LISTEN, &RELAYS, &REMOTE_PEER, &REMOTE_ADDRS, &SEED, &KEY_FILE, &NETWORK, &DCUTR, &FALLBACK,
            &DIRECT_DEADLINE, &SESSION, &PING_STREAMS, &IDLE,
        ],
    );
    let listen = or_exit(BINARY, source.multiaddrs(&LISTEN, "/ip4/0.0.0.0/tcp/4013"));
    let remote = or_exit(BINARY, source.peer_id(&REMOTE_PEER));
    let remote_addrs = or_exit(BINARY, source.required_multiaddrs(&REMOTE_ADDRS));
    for addr in &remote_addrs {
        if !is_relayed(addr) {
            node::bad_input(
                BINARY,
                &ConfigError {
                    variable: REMOTE_ADDRS.env,
                    message: format!("{addr} is not a /p2p-circuit address"),
                },
            );
        }
    }
    let explicit_relays = or_exit(BINARY, source.multiaddrs(&RELAYS, ""));
    let relay_addrs: Vec<Multiaddr> = if explicit_relays.is_empty() {
        remote_addrs.iter().filter_map(node::relay_part).collect()
    } else {
        explicit_relays
    };
    let relays: HashMap<PeerId, Multiaddr> =
        or_exit(BINARY, node::relay_peers(&RELAYS, &relay_addrs))
            .into_iter()
            .collect();
    let network = or_exit(BINARY, source.network());
    let dcutr = or_exit(BINARY, source.flag(&DCUTR, true));
    let fallback = or_exit(BINARY, source.flag(&FALLBACK, false));
    let direct_deadline = or_exit(BINARY, source.seconds(&DIRECT_DEADLINE, 15.0));
    let plan = Plan {
        local: Local::new(network.clone()),
        session: or_exit(BINARY, source.seconds(&SESSION, 3.0)),
        ping_streams: or_exit(BINARY, source.count(&PING_STREAMS, 0)),
    };
    let idle = or_exit(BINARY, source.seconds(&IDLE, 300.0));
    let key = or_exit(BINARY, identity::load(&source));
    let me = key.public().to_peer_id();
    let mut swarm = match node::peer_swarm(key, dcutr, idle) {
        Ok(swarm) => swarm,
        Err(error) => node::shutdown(&format!("swarm: {error}"), 1),
    };
    node::log_peer_id(&me);
    emit(
        "config",
        json!({ "network": network, "dcutr_enabled": dcutr, "allow_relay_fallback": fallback }),
    );
    node::listen_all(&mut swarm, BINARY, listen);

    let (open_tx, mut open_rx) = mpsc::channel::<StreamRequest>(64);
    let (done_tx, mut done_rx) = mpsc::channel::<Result<(), String>>(1);
    let mut waiting: HashMap<ConnectionId, VecDeque<oneshot::Sender<Result<KaspaIo, String>>>> =
        HashMap::new();
    let mut plan = Some(plan);

    let mut dialed_relays = false;
    let mut dialed_remote = false;
    let mut relayed_conn: Option<ConnectionId> = None;
    let mut session_conn: Option<ConnectionId> = None;

    let stop = node::termination();
    tokio::pin!(stop);
    let observe = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(observe);
    let reach = tokio::time::sleep(REACH_DEADLINE + OBSERVE_GRACE);
    tokio::pin!(reach);
    let direct = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(direct);

    let dial_remote = |swarm: &mut libp2p::Swarm<node::PeerBehaviour>, dialed: &mut bool| {
        if std::mem::replace(dialed, true) {
            return;
        }
        // One address at a time, in the order given.
        let opts = DialOpts::peer_id(remote)
            .addresses(remote_addrs.clone())
            .override_dial_concurrency_factor(NonZeroU8::MIN)
            .build();
        if let Err(error) = swarm.dial(opts) {
            emit(
                "dial_failed",
                json!({ "peer_id": remote.to_string(), "reason": error.to_string() }),
            );
            node::shutdown("could not dial the server", 1);
        }
    };

    loop {
        tokio::select! {
            _ = &mut stop => node::shutdown("signal", 0),
            _ = &mut observe, if !dialed_remote => {
                dial_remote(&mut swarm, &mut dialed_remote);
            }
            _ = &mut reach, if relayed_conn.is_none() && session_conn.is_none() => {
                node::shutdown("no relayed connection to the server", 1);
            }
            _ = &mut direct, if relayed_conn.is_some() && session_conn.is_none() => {
                let reason = format!("no direct connection within {:.1}s of the relayed one", direct_deadline.as_secs_f64());
                match (fallback, relayed_conn) {
                    (true, Some(conn)) => {
                        emit("relay_fallback", json!({ "reason": reason }));
                        session_conn = Some(conn);
                        if let Some(plan) = plan.take() {
                            tokio::spawn(run_session(plan, conn, open_tx.clone(), done_tx.clone()));
                        }
                    }
                    _ => node::shutdown(&reason, 1),
                }
            }
            Some((conn, reply)) = open_rx.recv() => {
                if swarm.behaviour_mut().kaspa.open(conn) {
                    waiting.entry(conn).or_default().push_back(reply);
                } else {
                    let _ = reply.send(Err(format!("connection {conn} is gone")));
                }
            }
            Some(result) = done_rx.recv() => match result {
                Ok(()) => node::shutdown("session complete", 0),
                Err(reason) => {
                    emit("handshake_failed", json!({ "peer_id": remote.to_string(), "reason": reason }));
                    node::shutdown(&reason, 1);
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    emit("listening", json!({ "addr": address.to_string(), "peer_id": me.to_string() }));
                    if !dialed_relays && relays.values().any(|r| node::reuses_port_towards(&address, r)) {
                        dialed_relays = true;
                        for addr in relays.values() {
                            if let Err(error) = swarm.dial(addr.clone()) {
                                emit("relay_dial_failed", json!({ "relay_addr": addr.to_string(), "reason": error.to_string() }));
                            }
                        }
                        observe.as_mut().reset(tokio::time::Instant::now() + OBSERVE_GRACE);
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
                    if peer_id == remote && is_relayed(endpoint.get_remote_address()) && relayed_conn.is_none() {
                        relayed_conn = Some(connection_id);
                        direct.as_mut().reset(tokio::time::Instant::now() + direct_deadline);
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, connection_id, endpoint, cause, .. } => {
                    node::log_connection_closed(&peer_id, connection_id, &endpoint, cause.map(|c| c.to_string()));
                    if let Some(replies) = waiting.remove(&connection_id) {
                        for reply in replies {
                            let _ = reply.send(Err(format!("connection {connection_id} closed")));
                        }
                    }
                    if session_conn == Some(connection_id) {
                        node::shutdown("the session's connection closed", 1);
                    }
                    if relayed_conn == Some(connection_id) && session_conn.is_none() {
                        relayed_conn = None;
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } if peer == remote && relayed_conn.is_none() && session_conn.is_none() => {
                    emit("dial_failed", json!({ "peer_id": peer.to_string(), "reason": error.to_string() }));
                    node::shutdown("could not reach the server through the relay", 1);
                }
                SwarmEvent::Behaviour(PeerBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) if relays.contains_key(&peer_id) => {
                    emit("observed_addr", json!({ "addr": info.observed_addr.to_string(), "by": peer_id.to_string() }));
                    // Not confirmed here: identify reports it as an external address *candidate*, which is
                    // what DCUtR offers the remote to punch to; confirming it first would hide it from DCUtR.
                    dial_remote(&mut swarm, &mut dialed_remote);
                }
                SwarmEvent::Behaviour(PeerBehaviourEvent::Dcutr(event)) => {
                    let remote_addr = event.result.as_ref().ok()
                        .and_then(|id| swarm.behaviour().kaspa.connection(*id))
                        .map(|c| c.remote_addr.clone());
                    node::log_dcutr(&event, remote_addr.as_ref());
                    if let Ok(conn) = event.result {
                        let direct_ok = swarm.behaviour().kaspa.connection(conn).is_some_and(|c| !c.relayed);
                        if event.remote_peer_id == remote && direct_ok && session_conn.is_none() {
                            session_conn = Some(conn);
                            // The relay only introduced us: stop using it, so nothing Kaspa crosses it.
                            if let Some(relayed) = relayed_conn.take() {
                                swarm.close_connection(relayed);
                            }
                            if let Some(plan) = plan.take() {
                                tokio::spawn(run_session(plan, conn, open_tx.clone(), done_tx.clone()));
                            }
                        }
                    }
                }
                SwarmEvent::Behaviour(PeerBehaviourEvent::Kaspa(event)) => match event {
                    streams::Event::Outbound(info, stream) => {
                        if let Some(reply) = waiting.get_mut(&info.connection_id).and_then(VecDeque::pop_front) {
                            let _ = reply.send(Ok(KaspaIo::new(stream, info)));
                        }
                    }
                    streams::Event::OutboundFailed(info, reason) => {
                        if let Some(reply) = waiting.get_mut(&info.connection_id).and_then(VecDeque::pop_front) {
                            let _ = reply.send(Err(reason));
                        }
                    }
                    streams::Event::Inbound(..) => {}
                },
                _ => {}
            }
        }
    }
}

async fn open_stream(
    open_tx: &mpsc::Sender<StreamRequest>,
    conn: ConnectionId,
) -> Result<KaspaIo, String> {
    let (reply, answer) = oneshot::channel();
    open_tx
        .send((conn, reply))
        .await
        .map_err(|_| "swarm stopped".to_string())?;
    answer.await.map_err(|_| "swarm stopped".to_string())?
}

/// The handshake on `conn`, then `ping_streams` concurrent extra streams with one ping each, then pings on
/// the handshake stream until the session time is up.
async fn run_session(
    plan: Plan,
    conn: ConnectionId,
    open_tx: mpsc::Sender<StreamRequest>,
    done: mpsc::Sender<Result<(), String>>,
) {
    let result = async {
        let io = open_stream(&open_tx, conn).await?;
        let mut session = kaspa::open(io).await?;
        kaspa::client_handshake(&plan.local, &mut session)
            .await
            .map_err(|e| e.to_string())?;
        let extra = (0..plan.ping_streams).map(|i| {
            let open_tx = open_tx.clone();
            async move {
                let io = open_stream(&open_tx, conn).await?;
                let mut extra = kaspa::open(io).await?;
                kaspa::ping(&mut extra, 1_000_000 + u64::from(i))
                    .await
                    .map(|_| ())
            }
        });
        for outcome in futures::future::join_all(extra).await {
            outcome?;
        }
        let ends = tokio::time::Instant::now() + plan.session;
        let mut nonce = 1u64;
        loop {
            kaspa::ping(&mut session, nonce).await?;
            nonce += 1;
            if tokio::time::Instant::now() >= ends {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500).min(ends - tokio::time::Instant::now()))
                .await;
        }
    }
    .await;
    let _ = done.send(result).await;
}
