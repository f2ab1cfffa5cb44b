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
/// How long a direct connection opened by the server's DCUtR dial waits for our own DCUtR result.
const INBOUND_GRACE: Duration = Duration::from_secs(1);

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
        "listen /ip4/0.0.0.0/tcp/4013, relays from the circuit addrs, network mainnet, DCUtR on,\n  no relay fallback, direct deadline 15 s, session 3 s, 0 extra ping streams, identity random,\n  idle timeout 300 s.",
    );
    let listen = or_exit(BINARY, source.multiaddrs(&LISTEN, "/ip4/0.0.0.0/tcp/4013"));
    let remote = or_exit(BINARY, source.peer_id(&REMOTE_PEER));
    let remote_addrs = or_exit(BINARY, source.required_multiaddrs(&REMOTE_ADDRS));
    for addr in &remote_addrs {
        let problem = if !is_relayed(addr) {
            Some("is not a /p2p-circuit address")
        } else if node::relay_part(addr)
            .as_ref()
            .and_then(node::last_peer)
            .is_none()
        {
            Some("does not name its relay (/p2p/<relay id> before /p2p-circuit)")
        } else {
            match node::last_peer(addr) {
                Some(peer) if peer != remote => {
                    Some("ends in a peer id other than LIBP2P_REMOTE_PEER_ID")
                }
                _ => None,
            }
        };
        if let Some(problem) = problem {
            node::bad_input(
                BINARY,
                &ConfigError {
                    variable: REMOTE_ADDRS.env,
                    message: format!("{addr} {problem}"),
                },
            );
        }
    }
    if listen.iter().any(is_relayed) {
        node::bad_input(
            BINARY,
            &ConfigError {
                variable: LISTEN.env,
                message: "the client listens on TCP addresses only (no /p2p-circuit)".into(),
            },
        );
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
    let relay_list: Vec<Multiaddr> = relays.values().cloned().collect();
    let mut swarm = match node::peer_swarm(key, dcutr, idle, &relay_list) {
        Ok(swarm) => swarm,
        Err(error) => node::shutdown(&format!("swarm: {error}"), 1),
    };
    node::log_peer_id(&me);
    emit(
        "config",
        json!({
            "network": network,
            "dcutr_enabled": dcutr,
            "allow_relay_fallback": fallback,
            "direct_deadline_secs": direct_deadline.as_secs_f64(),
            "session_secs": plan.session.as_secs_f64(),
            "remote_peer_id": remote.to_string(),
        }),
    );
    node::listen_all(&mut swarm, BINARY, listen);

    let (open_tx, mut open_rx) = mpsc::channel::<StreamRequest>(64);
    let (done_tx, mut done_rx) = mpsc::channel::<Result<(), String>>(1);
    let mut waiting: HashMap<ConnectionId, VecDeque<oneshot::Sender<Result<KaspaIo, String>>>> =
        HashMap::new();
    let mut run = Run {
        plan: Some(plan),
        relayed_conn: None,
        session_conn: None,
        open_tx,
        done_tx,
    };

    let mut dialed_relays = false;
    let mut dialed_remote = false;
    // A direct connection the server's DCUtR dial opened towards us (inbound here), waiting for our own
    // DCUtR result before we use it.
    let mut inbound_direct: Option<ConnectionId> = None;

    let stop = node::termination();
    tokio::pin!(stop);
    let never = || node::run_deadline(Duration::ZERO);
    let observe = never();
    tokio::pin!(observe);
    let reach = tokio::time::sleep(REACH_DEADLINE + OBSERVE_GRACE);
    tokio::pin!(reach);
    let direct = never();
    tokio::pin!(direct);
    let reuse_grace = never();
    tokio::pin!(reuse_grace);
    let mut grace_armed = false;
    let inbound_grace = never();
    tokio::pin!(inbound_grace);

    let dial_remote = |swarm: &mut libp2p::Swarm<node::PeerBehaviour>, dialed: &mut bool| {
        if std::mem::replace(dialed, true) {
            return;
        }
        // One address at a time, in the order given.
        emit(
            "dialing",
            json!({
                "peer_id": remote.to_string(),
                "addrs": remote_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        );
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
            _ = &mut reuse_grace, if grace_armed && !dialed_relays => {
                dialed_relays = true;
                emit("port_reuse_unavailable", json!({
                    "reason": "no listen address of the relays' address family and scope: dialling them from an ephemeral port",
                }));
                node::dial_relays(&mut swarm, &relays, "relay_dial_failed");
                observe.as_mut().reset(tokio::time::Instant::now() + OBSERVE_GRACE);
            }
            _ = &mut observe, if !dialed_remote => {
                dial_remote(&mut swarm, &mut dialed_remote);
            }
            _ = &mut reach, if run.relayed_conn.is_none() && run.session_conn.is_none() => {
                node::shutdown("no relayed connection to the server", 1);
            }
            _ = &mut inbound_grace, if inbound_direct.is_some() && run.session_conn.is_none() => {
                if let Some(conn) = inbound_direct.take() {
                    run.adopt(&mut swarm, conn, "inbound");
                }
            }
            _ = &mut direct, if run.relayed_conn.is_some() && run.session_conn.is_none() => {
                if let Some(conn) = inbound_direct.take() {
                    run.adopt(&mut swarm, conn, "inbound");
                    continue;
                }
                let reason = format!("no direct connection within {:.1}s of the relayed one", direct_deadline.as_secs_f64());
                match (fallback, run.relayed_conn) {
                    (true, Some(conn)) => {
                        emit("relay_fallback", json!({ "reason": reason, "connection_id": streams::connection_number(conn) }));
                        run.start(conn);
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
                        node::dial_relays(&mut swarm, &relays, "relay_dial_failed");
                        observe.as_mut().reset(tokio::time::Instant::now() + OBSERVE_GRACE);
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
                    node::log_connection(&peer_id, connection_id, &endpoint, relays.contains_key(&peer_id));
                    if peer_id != remote {
                        continue;
                    }
                    let relayed = swarm.behaviour().kaspa.connection(connection_id).is_none_or(|c| c.relayed);
                    if endpoint.is_relayed() {
                        if run.relayed_conn.is_none() && run.session_conn.is_none() {
                            run.relayed_conn = Some(connection_id);
                            direct.as_mut().reset(tokio::time::Instant::now() + direct_deadline);
                        }
                    } else if !relayed && dcutr && !endpoint.is_dialer() && run.relayed_conn.is_some()
                        && run.session_conn.is_none() && inbound_direct.is_none()
                    {
                        // The server's hole-punch dial arrived here. Our own DCUtR dial may still succeed (then
                        // its connection is used, so the DCUtR event and the handshake name one connection);
                        // if it does not within a moment, this one is as direct and is used instead.
                        inbound_direct = Some(connection_id);
                        inbound_grace.as_mut().reset(tokio::time::Instant::now() + INBOUND_GRACE);
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, connection_id, endpoint, cause, .. } => {
                    node::log_connection_closed(&peer_id, connection_id, &endpoint, cause.map(|c| c.to_string()));
                    if let Some(replies) = waiting.remove(&connection_id) {
                        for reply in replies {
                            let _ = reply.send(Err(format!("connection {connection_id} closed")));
                        }
                    }
                    if run.session_conn == Some(connection_id) {
                        node::shutdown("the session's connection closed", 1);
                    }
                    if inbound_direct == Some(connection_id) {
                        inbound_direct = None;
                    }
                    if run.relayed_conn == Some(connection_id) && run.session_conn.is_none() {
                        run.relayed_conn = None;
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id: Some(peer), error, .. } if peer == remote && run.relayed_conn.is_none() && run.session_conn.is_none() => {
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
                        if event.remote_peer_id == remote && direct_ok && run.session_conn.is_none() {
                            inbound_direct = None;
                            run.adopt(&mut swarm, conn, "dcutr");
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

/// Which connection the session runs on, and what it needs to start.
struct Run {
    plan: Option<Plan>,
    relayed_conn: Option<ConnectionId>,
    session_conn: Option<ConnectionId>,
    open_tx: mpsc::Sender<StreamRequest>,
    done_tx: mpsc::Sender<Result<(), String>>,
}

impl Run {
    /// Starts the handshake and session on `conn` (once).
    fn start(&mut self, conn: ConnectionId) {
        self.session_conn = Some(conn);
        if let Some(plan) = self.plan.take() {
            tokio::spawn(run_session(
                plan,
                conn,
                self.open_tx.clone(),
                self.done_tx.clone(),
            ));
        }
    }

    /// Uses the direct connection `conn` for the session and closes the relayed one, so no Kaspa byte
    /// crosses the relay. `source`: `dcutr` (our DCUtR dial) or `inbound` (the server's DCUtR dial).
    fn adopt(
        &mut self,
        swarm: &mut libp2p::Swarm<node::PeerBehaviour>,
        conn: ConnectionId,
        source: &str,
    ) {
        let Some(info) = swarm.behaviour().kaspa.connection(conn).cloned() else {
            return;
        };
        if info.relayed || self.session_conn.is_some() {
            return;
        }
        emit(
            "direct_connection",
            json!({
                "peer_id": info.peer_id.to_string(),
                "connection_id": info.connection_number(),
                "remote_addr": info.remote_addr.to_string(),
                "relayed": false,
                "source": source,
            }),
        );
        if let Some(relayed) = self.relayed_conn.take() {
            swarm.close_connection(relayed);
        }
        self.start(conn);
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
