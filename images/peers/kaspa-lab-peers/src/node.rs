//! What the three binaries share: swarm construction, start-up (settings, identity, signals), the events
//! every node logs about its connections, and multiaddr helpers. What only the two private peers share (the
//! handling of their swarm events) is in [`crate::peer`].

use std::error::Error;
use std::time::Duration;

use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, NetworkBehaviour};
use libp2p::{
    dcutr, identify, noise, ping, relay, tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder,
};
use serde_json::json;

use crate::config::{self, ConfigError, Parsed, Setting, Source};
use crate::connection_id::number as connection_number;
use crate::events::{emit, set_node};
use crate::streams::{self, remote_of};

pub const IDENTIFY_PROTOCOL: &str = "/kaspa-dcutr-lab/1.0.0";

/// Exit code of a run that failed (the last JSON event, `shutdown`, says why).
pub const EXIT_FAILED: i32 = 1;
/// Exit code for bad input, as the lab expects.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code of a client whose session's connection closed under it (`session_lost`): e.g. a session that
/// ran over the relay when the relay went away.
pub const EXIT_SESSION_LOST: i32 = 3;

/// Parses settings or exits: `--help` prints and exits 0, bad input prints one line and exits 2.
pub fn settings(
    node: &'static str,
    binary: &str,
    about: &str,
    wanted: &[&Setting],
    defaults: &str,
) -> Source {
    set_node(node);
    match Source::parse(
        wanted,
        |name| std::env::var(name).ok(),
        std::env::args().skip(1),
    ) {
        Ok(Parsed::Run(source)) => source,
        Ok(Parsed::Help) => {
            print!("{}", config::help(binary, about, wanted, defaults));
            std::process::exit(0);
        }
        Err(error) => bad_input(binary, &error),
    }
}

pub fn bad_input(binary: &str, error: &ConfigError) -> ! {
    eprintln!("{binary}: {error}");
    std::process::exit(EXIT_BAD_INPUT);
}

pub fn or_exit<T>(binary: &str, result: Result<T, ConfigError>) -> T {
    result.unwrap_or_else(|error| bad_input(binary, &error))
}

fn tcp_config() -> tcp::Config {
    tcp::Config::default().nodelay(true)
}

fn identify_behaviour(key: &Keypair) -> identify::Behaviour {
    identify::Behaviour::new(identify::Config::new(
        IDENTIFY_PROTOCOL.into(),
        key.public(),
    ))
}

fn ping_behaviour() -> ping::Behaviour {
    ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5)))
}

#[derive(NetworkBehaviour)]
pub struct PeerBehaviour {
    pub relay_client: relay::client::Behaviour,
    pub dcutr: Toggle<dcutr::Behaviour>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kaspa: streams::Behaviour,
}

/// A private peer's swarm: TCP (listen-port reuse on dials is libp2p's default), noise, yamux, the
/// relay-client transport, and DCUtR unless disabled (the lab's negative control).
pub fn peer_swarm(
    key: Keypair,
    dcutr_enabled: bool,
    idle: Duration,
    relay_addrs: &[Multiaddr],
) -> Result<Swarm<PeerBehaviour>, Box<dyn Error>> {
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp_config(), noise::Config::new, yamux::Config::default)?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| PeerBehaviour {
            relay_client,
            dcutr: Toggle::from(
                dcutr_enabled.then(|| dcutr::Behaviour::new(key.public().to_peer_id())),
            ),
            identify: identify_behaviour(key),
            ping: ping_behaviour(),
            kaspa: streams::Behaviour::new(relay_addrs),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    Ok(swarm)
}

#[derive(NetworkBehaviour)]
pub struct RelayBehaviour {
    pub relay: relay::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
}

pub fn relay_swarm(key: Keypair, idle: Duration) -> Result<Swarm<RelayBehaviour>, Box<dyn Error>> {
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp_config(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            // A lab relay: room for a relayed Kaspa handshake and session (the fallback path; the defaults
            // cut circuits at 128 KiB / 2 min), for many runs in a row from the same peers and NAT addresses
            // (no rate limits: the defaults allow 30 circuits per peer per 2 min), and for parallel runs.
            let config = relay::Config {
                max_reservations: 512,
                max_reservations_per_peer: 8,
                reservation_rate_limiters: Vec::new(),
                max_circuits: 256,
                max_circuits_per_peer: 32,
                max_circuit_duration: Duration::from_secs(600),
                max_circuit_bytes: 16 << 20,
                circuit_src_rate_limiters: Vec::new(),
                ..relay::Config::default()
            };
            RelayBehaviour {
                relay: relay::Behaviour::new(peer_id, config),
                identify: identify_behaviour(key),
                ping: ping_behaviour(),
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    Ok(swarm)
}

/// Listens on every address or exits 2 naming `LIBP2P_LISTEN_MULTIADDRS`.
pub fn listen_all<B: NetworkBehaviour>(swarm: &mut Swarm<B>, binary: &str, addrs: Vec<Multiaddr>) {
    for addr in addrs {
        if let Err(error) = swarm.listen_on(addr.clone()) {
            bad_input(
                binary,
                &ConfigError {
                    variable: config::LISTEN.env,
                    message: format!("cannot listen on {addr}: {error}"),
                },
            );
        }
    }
}

/// Fires after `run_for`, or (practically) never when it is zero.
pub fn run_deadline(run_for: Duration) -> tokio::time::Sleep {
    tokio::time::sleep(if run_for.is_zero() {
        Duration::MAX / 4
    } else {
        run_for
    })
}

pub fn log_peer_id(peer_id: &PeerId) {
    emit("peer_id", json!({ "peer_id": peer_id.to_string() }));
}

/// Logs `connection_established`. `to_relay` says whether the peer is one of our relays.
pub fn log_connection(
    peer_id: &PeerId,
    connection_id: ConnectionId,
    endpoint: &ConnectedPoint,
    to_relay: bool,
) {
    let (remote, relayed) = remote_of(endpoint);
    let role = if endpoint.is_dialer() {
        "dialer"
    } else {
        "listener"
    };
    let mut facts = json!({
        "peer_id": peer_id.to_string(),
        "remote_addr": remote.to_string(),
        "relayed": relayed,
        "connection_id": connection_number(connection_id),
        "endpoint": role,
        "to_relay": to_relay,
    });
    match endpoint {
        ConnectedPoint::Listener { local_addr, .. } => {
            facts["local_addr"] = json!(local_addr.to_string());
        }
        // The server's DCUtR dial (it listened on the relayed connection) runs the upgrade as the listener.
        ConnectedPoint::Dialer { role_override, .. } => {
            facts["role_override"] = json!(match role_override {
                Endpoint::Dialer => "dialer",
                Endpoint::Listener => "listener",
            });
        }
    }
    emit("connection_established", facts);
}

/// Logs `incoming_connection_error`: a connection reached one of our listeners but never became established
/// (e.g. its security upgrade failed or timed out). `error` is libp2p's error with its sources.
pub fn log_incoming_connection_error(
    connection_id: ConnectionId,
    local_addr: &Multiaddr,
    send_back_addr: &Multiaddr,
    peer_id: Option<&PeerId>,
    error: &dyn Error,
) {
    emit(
        "incoming_connection_error",
        json!({
            "connection_id": connection_number(connection_id),
            "local_addr": local_addr.to_string(),
            "send_back_addr": send_back_addr.to_string(),
            "peer_id": peer_id.map(|p| p.to_string()),
            "error": error_chain(error),
        }),
    );
}

/// Logs `outgoing_connection_error`: a dial of ours to a peer that is not one of our relays failed (the
/// client's circuit dial, or either side's DCUtR dial). `error` is libp2p's error with its sources.
pub fn log_outgoing_connection_error(
    connection_id: ConnectionId,
    peer_id: &PeerId,
    error: &dyn Error,
) {
    emit(
        "outgoing_connection_error",
        json!({
            "connection_id": connection_number(connection_id),
            "peer_id": peer_id.to_string(),
            "error": error_chain(error),
        }),
    );
}

/// An error and its sources, `outer: inner: ...`, a source whose text the previous one already ends with
/// left out; cut at 400 characters. libp2p's `Display` of a listen error hides the transport's reason.
pub fn error_chain(error: &dyn Error) -> String {
    const CLIP: usize = 400;
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    if text.chars().count() > CLIP {
        text = text.chars().take(CLIP).collect();
    }
    text
}

/// Logs `connection_closed`. `relayed` is the circuit fact `connection_established` gave (the lying-peer
/// control passes false for the relayed connection it disguised); `to_relay` says whether the peer is one of
/// our relays.
pub fn log_connection_closed(
    peer_id: &PeerId,
    connection_id: ConnectionId,
    relayed: bool,
    to_relay: bool,
    cause: Option<String>,
) {
    emit(
        "connection_closed",
        json!({
            "peer_id": peer_id.to_string(),
            "connection_id": connection_number(connection_id),
            "relayed": relayed,
            "to_relay": to_relay,
            "cause": cause,
        }),
    );
}

/// Logs a DCUtR outcome. On success `remote_addr` is the direct connection's remote address, when known.
pub fn log_dcutr(event: &dcutr::Event, remote_addr: Option<&Multiaddr>) {
    match &event.result {
        Ok(connection_id) => log_dcutr_ok(&event.remote_peer_id, *connection_id, remote_addr),
        Err(error) => emit(
            "dcutr",
            json!({
                "remote_peer_id": event.remote_peer_id.to_string(),
                "result": "error",
                "connection_id": null,
                "error": error.to_string(),
            }),
        ),
    }
}

/// The `dcutr` ok line.
pub fn log_dcutr_ok(
    remote_peer_id: &PeerId,
    connection_id: ConnectionId,
    remote_addr: Option<&Multiaddr>,
) {
    emit(
        "dcutr",
        json!({
            "remote_peer_id": remote_peer_id.to_string(),
            "result": "ok",
            "connection_id": connection_number(connection_id),
            "remote_addr": remote_addr.map(|a| a.to_string()),
            "error": null,
        }),
    );
}

/// `relay_addr` (ending in /p2p/<relay>) with `/p2p-circuit/p2p/<peer>` appended.
pub fn circuit_addr(relay_addr: &Multiaddr, peer: &PeerId) -> Multiaddr {
    relay_addr
        .clone()
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(*peer))
}

/// The peer id at the end of a multiaddr (`/p2p/<id>`), if any.
pub fn last_peer(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// The part of a circuit address before `/p2p-circuit`: the relay's own address.
pub fn relay_part(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut relay = Multiaddr::empty();
    for protocol in addr.iter() {
        if matches!(protocol, Protocol::P2pCircuit) {
            return Some(relay);
        }
        relay.push(protocol);
    }
    None
}

/// Whether a new listen address makes dials to `target` reuse the listening port. libp2p-tcp registers the
/// interfaces of a `0.0.0.0` listener one by one and only reuses a port registered for an address of the
/// same family and loopback-ness as the target: dialling on the first (often loopback) address would leave
/// from an ephemeral port, and the relay would observe a port nobody can punch to.
pub fn reuses_port_towards(listen: &Multiaddr, target: &Multiaddr) -> bool {
    fn ip(addr: &Multiaddr) -> Option<std::net::IpAddr> {
        addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(ip.into()),
            Protocol::Ip6(ip) => Some(ip.into()),
            _ => None,
        })
    }
    match (ip(listen), ip(target)) {
        (Some(l), Some(t)) => l.is_ipv4() == t.is_ipv4() && l.is_loopback() == t.is_loopback(),
        _ => false,
    }
}

/// Requires every relay multiaddr to name its relay (`/p2p/<id>`).
pub fn relay_peers(
    setting: &Setting,
    addrs: &[Multiaddr],
) -> Result<Vec<(PeerId, Multiaddr)>, ConfigError> {
    addrs
        .iter()
        .map(|addr| {
            last_peer(addr)
                .map(|peer| (peer, addr.clone()))
                .ok_or_else(|| ConfigError {
                    variable: setting.env,
                    message: format!("{addr} does not end in /p2p/<relay peer id>"),
                })
        })
        .collect()
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Resolves with the reason to stop a relay or server: `signal` (SIGTERM/SIGINT), or `run time elapsed` after
/// `run_for` (never when it is zero). Both exit 0.
pub async fn stop_reason(run_for: Duration) -> &'static str {
    tokio::select! {
        () = termination() => "signal",
        () = run_deadline(run_for) => "run time elapsed",
    }
}

pub fn shutdown(reason: &str, code: i32) -> ! {
    emit("shutdown", json!({ "reason": reason, "exit_code": code }));
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::is_relayed;

    #[test]
    fn circuit_parts() {
        let relay: Multiaddr =
            "/ip4/198.18.0.10/tcp/4011/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
                .parse()
                .expect("addr");
        let server = PeerId::random();
        let circuit = circuit_addr(&relay, &server);
        assert_eq!(relay_part(&circuit), Some(relay.clone()));
        assert_eq!(last_peer(&circuit), Some(server));
        assert!(is_relayed(&circuit));
        assert!(!is_relayed(&relay));
    }

    #[test]
    fn port_reuse_needs_a_matching_listen_address() {
        let public: Multiaddr = "/ip4/198.18.0.10/tcp/4011".parse().expect("addr");
        let loopback: Multiaddr = "/ip4/127.0.0.1/tcp/4011".parse().expect("addr");
        let lan: Multiaddr = "/ip4/192.168.1.2/tcp/4012".parse().expect("addr");
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/4012".parse().expect("addr");
        assert!(reuses_port_towards(&lan, &public));
        assert!(!reuses_port_towards(&lo, &public));
        assert!(reuses_port_towards(&lo, &loopback));
    }
}
