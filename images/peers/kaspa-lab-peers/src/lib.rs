//! Reference peers of the dcutr-lab: a circuit-relay-v2 relay, a private server and a private client that
//! punch a direct TCP path with DCUtR and then run the Kaspa P2P handshake (Version -> Verack -> Ready) as
//! gRPC over a libp2p stream on that direct connection.
//!
//! Logs are the lab's contract: one JSON object a line on stdout (see [`events`]), human lines on stderr.

pub mod client;
pub mod config;
pub mod connection_id;
pub mod events;
pub mod identity;
pub mod kaspa;
pub mod lie;
pub mod node;
pub mod peer;
pub mod session;
pub mod streams;

pub mod protowire {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("protowire");
}
