//! The Kaspa stream protocol as a NetworkBehaviour that knows which connection every stream runs on.
//!
//! Generic stream helpers pick "some" connection to a peer; the lab must be able to say, truthfully, that the
//! handshake ran on the direct connection DCUtR produced. So outbound streams are opened on one named
//! connection (`NotifyHandler::One`) and inbound streams are reported with the connection they arrived on,
//! together with that connection's remote address and whether it is a relay circuit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, StreamProtocol, SubstreamProtocol, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Stream};

use crate::connection_id;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/kaspa/p2p/bridge/1.0");

/// What the lab needs to know about the connection a stream runs on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer_id: PeerId,
    pub connection_id: ConnectionId,
    pub remote_addr: Multiaddr,
    pub relayed: bool,
    /// We dialled it (libp2p's `ConnectedPoint::Dialer`, DCUtR's role-overridden dial included); false: the
    /// remote dialled us.
    pub dialer: bool,
}

impl ConnectionInfo {
    pub fn connection_number(&self) -> u64 {
        connection_id::number(self.connection_id)
    }
}

pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// A direct connection's remote address without the trailing `/p2p/<peer>`: the transport endpoint, which
/// is what the lab compares with the NAT's public ip:port. Circuit addresses stay whole.
pub fn transport_addr(addr: &Multiaddr) -> Multiaddr {
    if is_relayed(addr) {
        return addr.clone();
    }
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// The remote address of a connection as the lab reports it, and whether the connection is a relay circuit.
///
/// An inbound circuit arrives with the circuit as *local* address (`<relay>/p2p-circuit`) and only
/// `/p2p/<src>` as remote address: its remote is then reported as `<relay>/p2p-circuit/p2p/<src>`.
pub fn remote_of(endpoint: &ConnectedPoint) -> (Multiaddr, bool) {
    let relayed = endpoint.is_relayed();
    let remote = match endpoint {
        ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } if relayed => {
            let mut addr = local_addr.clone();
            if let Some(peer @ Protocol::P2p(_)) = send_back_addr.iter().last() {
                addr.push(peer);
            }
            addr
        }
        _ => transport_addr(endpoint.get_remote_address()),
    };
    (remote, relayed)
}

#[derive(Debug)]
pub enum Event {
    Inbound(ConnectionInfo, Stream),
    Outbound(ConnectionInfo, Stream),
    OutboundFailed(ConnectionInfo, String),
}

/// The Kaspa stream behaviour. `relay_endpoints` are the relays' transport addresses (`/ip4/A/tcp/P`): a
/// connection whose remote is one of them counts as relayed even if it is not a circuit, so `relayed=false`
/// always means a non-circuit connection to something other than the relay.
#[derive(Default)]
pub struct Behaviour {
    relay_endpoints: HashSet<Multiaddr>,
    connections: HashMap<ConnectionId, ConnectionInfo>,
    /// Connections whose facts [`Behaviour::disguise`] rewrote (the lying-peer control), kept after they close
    /// so their `connection_closed` lies too.
    disguised: HashSet<ConnectionId>,
    pending: VecDeque<ToSwarm<Event, Command>>,
}

impl Behaviour {
    pub fn new(relay_addrs: &[Multiaddr]) -> Self {
        Self {
            relay_endpoints: relay_addrs.iter().map(transport_addr).collect(),
            ..Self::default()
        }
    }

    /// Opens a Kaspa stream on exactly this connection; the result comes back as an `Outbound` or
    /// `OutboundFailed` event.
    pub fn open(&mut self, connection_id: ConnectionId) -> bool {
        let Some(info) = self.connections.get(&connection_id) else {
            return false;
        };
        self.pending.push_back(ToSwarm::NotifyHandler {
            peer_id: info.peer_id,
            handler: NotifyHandler::One(connection_id),
            event: Command::Open,
        });
        true
    }

    /// The facts of an open connection (any peer, any protocol).
    pub fn connection(&self, connection_id: ConnectionId) -> Option<&ConnectionInfo> {
        self.connections.get(&connection_id)
    }

    /// The lying-peer control only ([`crate::lie`]): from now on this open connection's facts say it is a
    /// direct connection we dialled to `claimed_remote`, for every stream on it and every event that reads
    /// them. Returns the rewritten facts (the same on a second call); `None` if the connection is not open.
    pub fn disguise(
        &mut self,
        connection_id: ConnectionId,
        claimed_remote: &Multiaddr,
    ) -> Option<ConnectionInfo> {
        let info = self.connections.get_mut(&connection_id)?;
        info.relayed = false;
        info.dialer = true;
        info.remote_addr = claimed_remote.clone();
        self.disguised.insert(connection_id);
        Some(info.clone())
    }

    /// Whether [`Behaviour::disguise`] rewrote this connection's facts (open or closed since).
    pub fn is_disguised(&self, connection_id: ConnectionId) -> bool {
        self.disguised.contains(&connection_id)
    }

    fn remember(
        &mut self,
        connection_id: ConnectionId,
        peer_id: PeerId,
        endpoint: &ConnectedPoint,
    ) {
        let (remote_addr, circuit) = remote_of(endpoint);
        let relayed = circuit || self.relay_endpoints.contains(&remote_addr);
        self.connections.insert(
            connection_id,
            ConnectionInfo {
                peer_id,
                connection_id,
                remote_addr,
                relayed,
                dialer: endpoint.is_dialer(),
            },
        );
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let endpoint = ConnectedPoint::Listener {
            local_addr: local_addr.clone(),
            send_back_addr: remote_addr.clone(),
        };
        self.remember(connection_id, peer, &endpoint);
        Ok(Handler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let endpoint = ConnectedPoint::Dialer {
            address: addr.clone(),
            role_override,
            port_use,
        };
        self.remember(connection_id, peer, &endpoint);
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = event {
            self.connections.remove(&closed.connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        let Some(info) = self.connections.get(&connection_id).cloned() else {
            return;
        };
        let event = match event {
            HandlerEvent::Inbound(stream) => Event::Inbound(info, stream),
            HandlerEvent::Outbound(stream) => Event::Outbound(info, stream),
            HandlerEvent::OutboundFailed(reason) => Event::OutboundFailed(info, reason),
        };
        self.pending.push_back(ToSwarm::GenerateEvent(event));
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        match self.pending.pop_front() {
            Some(event) => Poll::Ready(event),
            None => Poll::Pending,
        }
    }
}

#[derive(Debug)]
pub enum Command {
    Open,
}

#[derive(Debug)]
pub enum HandlerEvent {
    Inbound(Stream),
    Outbound(Stream),
    OutboundFailed(String),
}

#[derive(Default)]
pub struct Handler {
    to_open: usize,
    events: VecDeque<HandlerEvent>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Command;
    type ToBehaviour = HandlerEvent;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn on_behaviour_event(&mut self, Command::Open: Self::FromBehaviour) {
        self.to_open += 1;
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        if self.to_open > 0 {
            self.to_open -= 1;
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ()),
            });
        }
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: stream,
                ..
            }) => {
                self.events.push_back(HandlerEvent::Inbound(stream));
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: stream,
                ..
            }) => {
                self.events.push_back(HandlerEvent::Outbound(stream));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                self.events
                    .push_back(HandlerEvent::OutboundFailed(error.to_string()));
            }
            _ => {}
        }
    }
}
