//! `kaspa_p2p_server`: a private Kaspa peer. Listens, reserves a slot on the relay, listens on its
//! `/p2p-circuit` address and serves the Kaspa P2P service on every inbound libp2p stream, logging which
//! connection each client's session arrived on (`session_connection`). `LAB_LIE_DIRECT` is the lying-peer
//! control ([`kaspa_lab_peers::lie`]).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{relay, Multiaddr, PeerId};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use kaspa_lab_peers::config::{
    ConfigError, DCUTR, IDLE, KEY_FILE, LIE_DIRECT, LISTEN, NETWORK, RELAYS, RUN_FOR, SEED,
};
use kaspa_lab_peers::events::emit;
use kaspa_lab_peers::identity;
use kaspa_lab_peers::kaspa::{self, KaspaIo, Local};
use kaspa_lab_peers::lie;
use kaspa_lab_peers::node::{self, or_exit};
use kaspa_lab_peers::peer::{log_relay_dial_failed, Peer, PeerEvent};
use kaspa_lab_peers::session::{log_session_connection, Source};
use kaspa_lab_peers::streams::{self, is_relayed, ConnectionInfo};

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
            &LISTEN, &RELAYS, &SEED, &KEY_FILE, &NETWORK, &DCUTR, &IDLE, &RUN_FOR, &LIE_DIRECT,
        ],
        "listen /ip4/0.0.0.0/tcp/4012, network mainnet, DCUtR on, identity random, idle timeout 300 s,\n  run until signalled, no lying.",
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
    let lie::Switches { lie, dcutr } = or_exit(BINARY, lie::switches(&source, &[]));
    let idle = or_exit(BINARY, source.seconds(&IDLE, 300.0));
    let run_for = or_exit(BINARY, source.seconds(&RUN_FOR, 0.0));
    let key = or_exit(BINARY, identity::load(&source));
    let mut peer = Peer::start(key, dcutr, idle, relays);
    emit(
        "config",
        json!({ "network": network, "dcutr_enabled": dcutr, "lie_direct": lie }),
    );

    let (incoming_tx, incoming_rx) = mpsc::channel::<KaspaIo>(64);
    let local = Local::new(network);
    tokio::spawn(async move {
        if let Err(error) = kaspa::serve(local, incoming_rx).await {
            emit("kaspa_server_failed", json!({ "error": error.to_string() }));
        }
    });

    node::listen_all(&mut peer.swarm, BINARY, listen);
    let mut reservations = Reservations::new();
    let mut sessions = Sessions::new(lie);
    let stop = node::stop_reason(run_for);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            reason = &mut stop => node::shutdown(reason, 0),
            () = reservations.retry_due() => reservations.retry(&mut peer),
            event = peer.next() => match event {
                PeerEvent::Kaspa(streams::Event::Inbound(info, stream)) => {
                    let info = sessions.arrived(&mut peer, info);
                    let handed_over = incoming_tx.send(KaspaIo::new(stream, info)).await;
                    if handed_over.is_err() {
                        node::shutdown("kaspa service stopped", 1);
                    }
                }
                event => {
                    sessions.on(&event);
                    reservations.on(&mut peer, event);
                }
            },
        }
    }
}

/// Which connections the clients' sessions arrived on: the first Kaspa stream of a connection (a client's
/// handshake stream) is logged as `session_connection`, its `source` saying whether our own DCUtR produced
/// the connection, the client's dial reached our listener, or it is the relay circuit.
struct Sessions {
    /// The lying-peer control: a session arriving over the relay is claimed direct.
    lie: bool,
    /// Connections our DCUtR reported ok, while open.
    own_dcutr: HashSet<ConnectionId>,
    /// Connections a session arrived on, while open.
    seen: HashSet<ConnectionId>,
}

impl Sessions {
    fn new(lie: bool) -> Self {
        Self {
            lie,
            own_dcutr: HashSet::new(),
            seen: HashSet::new(),
        }
    }

    fn on(&mut self, event: &PeerEvent) {
        match event {
            PeerEvent::Dcutr(dcutr) => {
                if let Ok(conn) = dcutr.result {
                    self.own_dcutr.insert(conn);
                }
            }
            PeerEvent::Closed { connection_id, .. } => {
                self.own_dcutr.remove(connection_id);
                self.seen.remove(connection_id);
            }
            _ => {}
        }
    }

    /// A Kaspa stream arrived on `info`'s connection: the facts its handshake and pings will log.
    fn arrived(&mut self, peer: &mut Peer, info: ConnectionInfo) -> ConnectionInfo {
        let conn = info.connection_id;
        if !self.seen.insert(conn) {
            // Not the first stream: the connection's facts as they now stand (the liar's disguise included).
            return peer
                .swarm
                .behaviour()
                .kaspa
                .connection(conn)
                .cloned()
                .unwrap_or(info);
        }
        let (info, source) = if self.lie && info.relayed {
            let kaspa = &mut peer.swarm.behaviour_mut().kaspa;
            match lie::claim_direct(kaspa, conn, lie::SERVER_CLAIMS) {
                Some(disguised) => (disguised, Source::Dcutr),
                None => (info, Source::Relay),
            }
        } else {
            let source = Source::of_arrival(&info, &self.own_dcutr);
            (info, source)
        };
        log_session_connection(&info, source);
        info
    }
}

/// The reservations on our relays: requested when a relay's identify arrives (or `IDENTIFY_GRACE` after
/// connecting, if it never does); a lost relay is re-dialled and a lost reservation re-requested, with
/// back-off.
struct Reservations {
    /// Relays with a reservation requested or held.
    reserving: HashSet<PeerId>,
    retry: Pin<Box<Sleep>>,
    retry_armed: bool,
    backoff: Duration,
}

impl Reservations {
    fn new() -> Self {
        Self {
            reserving: HashSet::new(),
            retry: Box::pin(tokio::time::sleep(Duration::ZERO)),
            retry_armed: false,
            backoff: RETRY_FIRST,
        }
    }

    /// Resolves when a retry is due (cancel-safe).
    async fn retry_due(&mut self) {
        if self.retry_armed {
            self.retry.as_mut().await;
        } else {
            std::future::pending().await
        }
    }

    fn retry_in(&mut self, after: Duration) {
        self.retry_armed = true;
        self.retry.as_mut().reset(Instant::now() + after);
    }

    /// Schedules a retry after the current back-off, doubles it, and returns the wait.
    fn back_off(&mut self) -> Duration {
        let wait = self.backoff;
        self.retry_in(wait);
        self.backoff = (wait * 2).min(RETRY_MAX);
        wait
    }

    fn retry(&mut self, peer: &mut Peer) {
        self.retry_armed = false;
        let relays: Vec<(PeerId, Multiaddr)> =
            peer.relays().iter().map(|(p, a)| (*p, a.clone())).collect();
        for (relay, addr) in relays {
            if !peer.swarm.is_connected(&relay) {
                emit(
                    "relay_redial",
                    json!({ "relay_peer_id": relay.to_string(), "relay_addr": addr.to_string() }),
                );
                peer.dial_relay(&relay);
            } else if !self.reserving.contains(&relay) {
                self.reserve(peer, &relay, &addr);
            }
        }
    }

    /// Requests a reservation on `relay` by listening on its circuit address.
    fn reserve(&mut self, peer: &mut Peer, relay: &PeerId, relay_addr: &Multiaddr) {
        self.reserving.insert(*relay);
        emit(
            "reservation_requested",
            json!({ "relay_peer_id": relay.to_string() }),
        );
        if let Err(error) = peer
            .swarm
            .listen_on(relay_addr.clone().with(Protocol::P2pCircuit))
        {
            self.reserving.remove(relay);
            log_reservation_failed(Some(relay), &error.to_string(), None);
        }
    }

    fn on(&mut self, peer: &mut Peer, event: PeerEvent) {
        match event {
            PeerEvent::Established {
                peer_id,
                to_relay: true,
                ..
            } if !self.reserving.contains(&peer_id) => {
                // The reservation is normally requested when the relay's identify arrives; if it never does,
                // request it anyway.
                self.retry_in(IDENTIFY_GRACE);
            }
            PeerEvent::RelayIdentified { relay } if !self.reserving.contains(&relay) => {
                if let Some(addr) = peer.relays().get(&relay).cloned() {
                    self.reserve(peer, &relay, &addr);
                }
            }
            PeerEvent::RelayUnreachable { relay, reason } => {
                if let Some(addr) = peer.relays().get(&relay) {
                    let reason = format!("cannot reach the relay: {reason}");
                    log_relay_dial_failed(&relay, addr, &reason, Some(self.backoff));
                }
                self.back_off();
            }
            PeerEvent::ListenerClosed { addresses, reason } if addresses.iter().any(is_relayed) => {
                self.reservation_lost(&addresses, reason);
            }
            PeerEvent::ListenerError { reason } => {
                emit("listener_error", json!({ "reason": reason }));
            }
            PeerEvent::Relay(event) => self.relay_event(peer, event),
            _ => {}
        }
    }

    /// A circuit listener closed: the relay refused or dropped the reservation.
    fn reservation_lost(&mut self, addresses: &[Multiaddr], reason: Result<(), std::io::Error>) {
        let reason = match reason {
            Ok(()) => "reservation closed".to_string(),
            Err(e) => e.to_string(),
        };
        let relay = addresses
            .iter()
            .find_map(|a| node::relay_part(a).as_ref().and_then(node::last_peer));
        if let Some(relay) = relay {
            self.reserving.remove(&relay);
        }
        log_reservation_failed(relay.as_ref(), &reason, Some(self.backoff));
        self.back_off();
    }

    fn relay_event(&mut self, peer: &Peer, event: relay::client::Event) {
        match event {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            } => {
                if let Some(relay_addr) = peer.relays().get(&relay_peer_id) {
                    self.backoff = RETRY_FIRST;
                    emit(
                        "reservation_accepted",
                        json!({
                            "relay_peer_id": relay_peer_id.to_string(),
                            "circuit_addr": node::circuit_addr(relay_addr, &peer.me).to_string(),
                            "renewal": renewal,
                        }),
                    );
                }
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                emit(
                    "inbound_circuit",
                    json!({ "src_peer_id": src_peer_id.to_string() }),
                );
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                emit(
                    "outbound_circuit",
                    json!({ "relay_peer_id": relay_peer_id.to_string() }),
                );
            }
        }
    }
}

/// `reservation_failed`: the relay was reached but the reservation was refused, dropped or could not be
/// requested. (A relay that could not be reached at all is `relay_dial_failed`.)
fn log_reservation_failed(relay: Option<&PeerId>, reason: &str, retry_in: Option<Duration>) {
    let mut facts = json!({
        "relay_peer_id": relay.map(ToString::to_string),
        "reason": reason,
    });
    if let Some(retry_in) = retry_in {
        facts["retry_in_secs"] = json!(retry_in.as_secs());
    }
    emit("reservation_failed", facts);
}
