//! `kaspa_p2p_client`: a private Kaspa peer that reaches a private server through the relay, lets DCUtR
//! upgrade to a direct connection, runs the Kaspa handshake on that direct connection, keeps a ping/pong
//! session for a while and exits 0. Without a direct connection it exits 1, or with
//! `--allow-relay-fallback` runs the handshake over the relay (the lab then reports `relayed`). When the
//! connection the session runs on closes under it (a relayed session when the relay goes) it logs
//! `session_lost` and exits 3. `LAB_LIE_DIRECT` is the lying-peer control ([`kaspa_lab_peers::lie`]).

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU8;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use kaspa_lab_peers::client::{Action, Client, Input, SessionFailure, Settings, Source, Stage};
use kaspa_lab_peers::config::{
    ConfigError, DCUTR, DIRECT_DEADLINE, FALLBACK, IDLE, KEY_FILE, LIE_DIRECT, LISTEN, NETWORK,
    PING_EVERY, PING_STREAMS, PONGS_AFTER_RELAY, RELAYS, REMOTE_ADDRS, REMOTE_PEER, SEED, SESSION,
};
use kaspa_lab_peers::connection_id;
use kaspa_lab_peers::events::emit;
use kaspa_lab_peers::identity;
use kaspa_lab_peers::kaspa::{self, KaspaIo, Local};
use kaspa_lab_peers::lie;
use kaspa_lab_peers::node::{self, or_exit};
use kaspa_lab_peers::peer::{Peer, PeerEvent};
use kaspa_lab_peers::session::log_session_connection;
use kaspa_lab_peers::streams::{self, is_relayed, ConnectionInfo};

const BINARY: &str = "kaspa_p2p_client";

type Reply = oneshot::Sender<Result<KaspaIo, String>>;
type StreamRequest = (ConnectionId, Reply);

struct Plan {
    local: Local,
    session: Duration,
    ping_streams: u32,
    /// The pause between a pong and the next ping of the session.
    ping_every: Duration,
    /// End the session this many pongs after the connection to the relay closed (0: only at `session`): a
    /// session that outlives the relay by a few pongs has shown what it can, so the run need not wait longer.
    pongs_after_relay_loss: u32,
    /// Set by the driver when a connection to one of our relays closes.
    relay_gone: Arc<AtomicBool>,
}

#[tokio::main]
async fn main() {
    let source = node::settings(
        "client",
        BINARY,
        "private Kaspa peer that dials a private server through a relay and punches a direct path with DCUtR",
        &[
            &LISTEN, &RELAYS, &REMOTE_PEER, &REMOTE_ADDRS, &SEED, &KEY_FILE, &NETWORK, &DCUTR, &FALLBACK,
            &DIRECT_DEADLINE, &SESSION, &PING_EVERY, &PONGS_AFTER_RELAY, &PING_STREAMS, &IDLE,
            &LIE_DIRECT,
        ],
        "listen /ip4/0.0.0.0/tcp/4013, relays from the circuit addrs, network mainnet, DCUtR on,\n  no relay fallback, direct deadline 15 s, session 3 s (a ping every 0.5 s, no early end after the\n  relay's loss), 0 extra ping streams,\n  identity random, idle timeout 300 s, no lying.",
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
    let lie::Switches { lie, dcutr } = or_exit(BINARY, lie::switches(&source, &[&FALLBACK]));
    let fallback = or_exit(BINARY, source.flag(&FALLBACK, false));
    let direct_deadline = or_exit(BINARY, source.seconds(&DIRECT_DEADLINE, 15.0));
    let relay_gone = Arc::new(AtomicBool::new(false));
    let plan = Plan {
        local: Local::new(network.clone()),
        session: or_exit(BINARY, source.seconds(&SESSION, 3.0)),
        ping_streams: or_exit(BINARY, source.count(&PING_STREAMS, 0)),
        ping_every: or_exit(BINARY, source.seconds(&PING_EVERY, 0.5)),
        pongs_after_relay_loss: or_exit(BINARY, source.count(&PONGS_AFTER_RELAY, 0)),
        relay_gone: Arc::clone(&relay_gone),
    };
    let idle = or_exit(BINARY, source.seconds(&IDLE, 300.0));
    let key = or_exit(BINARY, identity::load(&source));
    let mut peer = Peer::start(key, dcutr, idle, relays);
    emit(
        "config",
        json!({
            "network": network,
            "dcutr_enabled": dcutr,
            "allow_relay_fallback": fallback,
            "direct_deadline_secs": direct_deadline.as_secs_f64(),
            "session_secs": plan.session.as_secs_f64(),
            "ping_every_secs": plan.ping_every.as_secs_f64(),
            "pongs_after_relay_loss": plan.pongs_after_relay_loss,
            "remote_peer_id": remote.to_string(),
            "lie_direct": lie,
        }),
    );
    node::listen_all(&mut peer.swarm, BINARY, listen);

    let (open_tx, mut open_rx) = mpsc::channel::<StreamRequest>(64);
    let (news_tx, mut news_rx) = mpsc::channel::<Input>(4);
    let mut driver = Driver {
        peer,
        remote,
        remote_addrs,
        plan: Some(plan),
        open_tx,
        news_tx,
        waiting: StreamRequests::default(),
        session: None,
        relay_gone,
    };
    let settings = Settings {
        remote,
        dcutr,
        fallback,
        direct_deadline,
        lie,
    };
    let mut client = Client::new(settings, Instant::now());
    let stop = node::termination();
    tokio::pin!(stop);
    let wake = node::run_deadline(Duration::ZERO);
    tokio::pin!(wake);
    loop {
        if let Some(at) = client.wake_at() {
            if wake.deadline() != at {
                wake.as_mut().reset(at);
            }
        }
        let input = tokio::select! {
            _ = &mut stop => node::shutdown("signal", 0),
            () = &mut wake, if client.wake_at().is_some() => Input::Tick,
            Some((conn, reply)) = open_rx.recv() => {
                driver.waiting.open(&mut driver.peer, conn, reply);
                continue;
            }
            Some(news) = news_rx.recv() => news,
            event = driver.peer.next() => match driver.input(event) {
                Some(input) => input,
                None => continue,
            },
        };
        let actions = client.step(input, Instant::now(), &driver.peer.swarm.behaviour().kaspa);
        for action in actions {
            driver.act(action);
        }
    }
}

/// Carries out what the state machine ([`Client`]) decides, and turns swarm events into its inputs.
struct Driver {
    peer: Peer,
    remote: PeerId,
    remote_addrs: Vec<Multiaddr>,
    /// Taken when the session starts (once).
    plan: Option<Plan>,
    open_tx: mpsc::Sender<StreamRequest>,
    /// The session task's news for the machine (`HandshakeDone`, `SessionEnded`).
    news_tx: mpsc::Sender<Input>,
    waiting: StreamRequests,
    /// The facts of the connection the session runs on, as its events log them (kept: they are gone from
    /// the swarm when it closes).
    session: Option<ConnectionInfo>,
    /// Shared with the session task: a connection to one of our relays closed.
    relay_gone: Arc<AtomicBool>,
}

impl Driver {
    /// What the machine needs to know of a swarm event (stream results are handled here).
    fn input(&mut self, event: PeerEvent) -> Option<Input> {
        match event {
            PeerEvent::RelaysDialled => Some(Input::RelaysDialled),
            PeerEvent::RelayIdentified { .. } => Some(Input::RelayIdentified),
            PeerEvent::Established {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => Some(Input::Established {
                peer: peer_id,
                conn: connection_id,
                circuit: endpoint.is_relayed(),
                inbound: !endpoint.is_dialer(),
            }),
            PeerEvent::Closed {
                peer_id,
                connection_id,
                cause,
            } => {
                if self.peer.relays().contains_key(&peer_id) {
                    self.relay_gone.store(true, Ordering::Relaxed);
                }
                self.waiting.closed(connection_id);
                Some(Input::Closed {
                    conn: connection_id,
                    cause,
                })
            }
            PeerEvent::DialFailed { peer_id, reason } => Some(Input::DialFailed {
                peer: peer_id,
                reason,
            }),
            PeerEvent::Dcutr(event) => event.result.ok().map(|conn| Input::DcutrOk {
                peer: event.remote_peer_id,
                conn,
            }),
            PeerEvent::Kaspa(event) => {
                self.waiting.answer(event);
                None
            }
            _ => None,
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::DialServer => self.dial_server(),
            Action::UseDirect {
                conn,
                source,
                close,
            } => self.use_direct(conn, source, close),
            Action::FallBack { conn, reason } => {
                emit(
                    "relay_fallback",
                    json!({ "reason": reason, "connection_id": connection_id::number(conn) }),
                );
                let info = self.peer.swarm.behaviour().kaspa.connection(conn).cloned();
                self.start(info, Source::Relay);
            }
            Action::LieDirect { conn } => self.lie_direct(conn),
            Action::ReportDialFailed { reason } => {
                emit(
                    "dial_failed",
                    json!({ "peer_id": self.remote.to_string(), "reason": reason }),
                );
            }
            Action::ReportFailed { stage, reason } => {
                let event = match stage {
                    Stage::Handshake => "handshake_failed",
                    Stage::Session => "session_failed",
                };
                let mut facts = self.session_facts();
                facts["reason"] = json!(reason);
                emit(event, facts);
            }
            Action::ReportLost { stage, reason } => {
                let mut facts = self.session_facts();
                facts["stage"] = json!(stage.as_str());
                facts["reason"] = json!(reason);
                emit("session_lost", facts);
            }
            Action::Exit { reason, code } => node::shutdown(&reason, code),
        }
    }

    /// The facts of the session's connection every session event names.
    fn session_facts(&self) -> serde_json::Value {
        match &self.session {
            Some(info) => json!({
                "peer_id": info.peer_id.to_string(),
                "connection_id": info.connection_number(),
                "relayed": info.relayed,
                "remote_addr": info.remote_addr.to_string(),
            }),
            None => json!({ "peer_id": self.remote.to_string() }),
        }
    }

    /// Dials the server through the relay: one circuit address at a time, in the order given.
    fn dial_server(&mut self) {
        emit(
            "dialing",
            json!({
                "peer_id": self.remote.to_string(),
                "addrs": self.remote_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }),
        );
        let opts = DialOpts::peer_id(self.remote)
            .addresses(self.remote_addrs.clone())
            .override_dial_concurrency_factor(NonZeroU8::MIN)
            .build();
        if let Err(error) = self.peer.swarm.dial(opts) {
            self.act(Action::ReportDialFailed {
                reason: error.to_string(),
            });
            node::shutdown("could not dial the server", 1);
        }
    }

    /// Runs the session on the direct connection `conn` and closes the relayed one, so no Kaspa byte
    /// crosses the relay.
    fn use_direct(&mut self, conn: ConnectionId, source: Source, close: Option<ConnectionId>) {
        let info = self.peer.swarm.behaviour().kaspa.connection(conn).cloned();
        if let Some(info) = &info {
            log_direct_connection(info, source);
        }
        if let Some(relayed) = close {
            self.peer.swarm.close_connection(relayed);
        }
        self.start(info, source);
    }

    /// The lying-peer control: logs the relayed connection as the direct one our DCUtR punched (with the
    /// relayed connection's id) and runs the session on it; every event of the session then repeats the lie.
    fn lie_direct(&mut self, conn: ConnectionId) {
        let kaspa = &mut self.peer.swarm.behaviour_mut().kaspa;
        let info = lie::claim_direct(kaspa, conn, lie::CLIENT_CLAIMS);
        if let Some(info) = &info {
            log_direct_connection(info, Source::Dcutr);
        }
        self.start(info, Source::Dcutr);
    }

    /// Logs `session_connection` and starts the handshake and session on that connection (once). The machine
    /// only picks connections that are open, and nothing closes between its step and this action.
    fn start(&mut self, info: Option<ConnectionInfo>, source: Source) {
        let Some(info) = info else {
            node::shutdown(
                "the session's connection was gone when the session started",
                node::EXIT_FAILED,
            );
        };
        let Some(plan) = self.plan.take() else {
            return;
        };
        log_session_connection(&info, source);
        let conn = info.connection_id;
        self.session = Some(info);
        tokio::spawn(run_session(
            plan,
            conn,
            self.open_tx.clone(),
            self.news_tx.clone(),
        ));
    }
}

/// `direct_connection`: the direct connection the session is about to run on and where it came from.
fn log_direct_connection(info: &ConnectionInfo, source: Source) {
    emit(
        "direct_connection",
        json!({
            "peer_id": info.peer_id.to_string(),
            "connection_id": info.connection_number(),
            "remote_addr": info.remote_addr.to_string(),
            "relayed": info.relayed,
            "source": source.as_str(),
        }),
    );
}

/// The session's requests for Kaspa streams, each answered when its stream opens, fails or its connection
/// closes.
#[derive(Default)]
struct StreamRequests(HashMap<ConnectionId, VecDeque<Reply>>);

impl StreamRequests {
    fn open(&mut self, peer: &mut Peer, conn: ConnectionId, reply: Reply) {
        if peer.swarm.behaviour_mut().kaspa.open(conn) {
            self.0.entry(conn).or_default().push_back(reply);
        } else {
            let _ = reply.send(Err(format!("connection {conn} is gone")));
        }
    }

    fn answer(&mut self, event: streams::Event) {
        let (info, answer) = match event {
            streams::Event::Outbound(info, stream) => {
                (info.clone(), Ok(KaspaIo::new(stream, info)))
            }
            streams::Event::OutboundFailed(info, reason) => (info, Err(reason)),
            streams::Event::Inbound(..) => return,
        };
        if let Some(reply) = self
            .0
            .get_mut(&info.connection_id)
            .and_then(VecDeque::pop_front)
        {
            let _ = reply.send(answer);
        }
    }

    fn closed(&mut self, conn: ConnectionId) {
        for reply in self.0.remove(&conn).unwrap_or_default() {
            let _ = reply.send(Err(format!("connection {conn} closed")));
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

/// A failure of the stream or its connection.
fn transport(reason: String) -> SessionFailure {
    SessionFailure {
        reason,
        transport: true,
    }
}

/// The handshake on `conn`, then `ping_streams` concurrent extra streams with one ping each, then a ping on
/// the handshake stream every `ping_every` until the session time is up, or `pongs_after_relay_loss` pongs
/// came back after the connection to the relay closed. Tells the machine when the handshake is done and how
/// the session ended.
async fn run_session(
    plan: Plan,
    conn: ConnectionId,
    open_tx: mpsc::Sender<StreamRequest>,
    news: mpsc::Sender<Input>,
) {
    let result = async {
        let io = open_stream(&open_tx, conn).await.map_err(transport)?;
        let mut session = kaspa::open(io).await.map_err(transport)?;
        kaspa::client_handshake(&plan.local, &mut session)
            .await
            .map_err(|e| SessionFailure {
                transport: e.is_transport(),
                reason: e.to_string(),
            })?;
        let _ = news.send(Input::HandshakeDone).await;
        let session_result: Result<(), String> = async {
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
            let mut after_relay = 0u32;
            loop {
                // Read before the ping: a pong counts as after the relay's loss only if the loss came first.
                let relay_gone = plan.relay_gone.load(Ordering::Relaxed);
                kaspa::ping(&mut session, nonce).await?;
                nonce += 1;
                if relay_gone {
                    after_relay += 1;
                }
                let now = tokio::time::Instant::now();
                let enough =
                    plan.pongs_after_relay_loss > 0 && after_relay >= plan.pongs_after_relay_loss;
                if now >= ends || enough {
                    return Ok(());
                }
                tokio::time::sleep(plan.ping_every.min(ends - now)).await;
            }
        }
        .await;
        session_result.map_err(transport)
    }
    .await;
    let _ = news.send(Input::SessionEnded(result)).await;
}
