//! The Kaspa P2P handshake as gRPC (`protowire.P2P/MessageStream`) over a libp2p stream.
//!
//! tonic speaks HTTP/2 over any byte stream: the server side gets libp2p streams through
//! `serve_with_incoming`, the client side through `connect_with_connector`, as Kaspa's own libp2p bridge does.
//! Window and frame sizes are raised to Kaspa's (the PoC hit FRAME_SIZE_ERROR with tonic's defaults).
//!
//! The flow, symmetric on both ends: send Version; on the peer's Version check the network (a wrong one gets
//! Reject) and answer Verack; once both Veracks are exchanged send Ready; done when Ready came back.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream as FuturesStream, StreamExt};
use hyper_util::rt::TokioIo;
use libp2p::Stream;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tonic::transport::server::Connected;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

use crate::events::emit;
use crate::protowire::kaspad_message::Payload;
use crate::protowire::p2p_client::P2pClient;
use crate::protowire::p2p_server::{P2p, P2pServer};
use crate::protowire::{
    KaspadMessage, PingMessage, PongMessage, ReadyMessage, RejectMessage, VerackMessage,
    VersionMessage,
};
use crate::streams::ConnectionInfo;

pub const PROTOCOL_VERSION: u32 = 7;
pub const USER_AGENT: &str = concat!("/dcutr-lab-reference:", env!("CARGO_PKG_VERSION"), "/");
const MAX_FRAME: u32 = 1 << 20;
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_MESSAGE: usize = 64 << 20;
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// A libp2p stream as tokio IO, carrying the facts of the connection it runs on.
pub struct KaspaIo {
    inner: Compat<Stream>,
    info: ConnectionInfo,
}

impl KaspaIo {
    pub fn new(stream: Stream, info: ConnectionInfo) -> Self {
        Self {
            inner: stream.compat(),
            info,
        }
    }
}

impl AsyncRead for KaspaIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KaspaIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connected for KaspaIo {
    type ConnectInfo = ConnectionInfo;
    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

/// What this node says about itself in Version.
#[derive(Clone, Debug)]
pub struct Local {
    pub network: String,
    pub id: [u8; 16],
}

impl Local {
    pub fn new(network: String) -> Self {
        Self {
            network,
            id: rand::random(),
        }
    }

    fn version(&self) -> KaspadMessage {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        message(Payload::Version(VersionMessage {
            protocol_version: PROTOCOL_VERSION,
            services: 0,
            timestamp,
            address: None,
            id: self.id.to_vec(),
            user_agent: USER_AGENT.into(),
            disable_relay_tx: true,
            subnetwork_id: None,
            network: format!("kaspa-{}", self.network),
        }))
    }
}

fn message(payload: Payload) -> KaspadMessage {
    KaspadMessage {
        response_id: 0,
        request_id: 0,
        payload: Some(payload),
    }
}

/// What the peer said about itself in its Version (the network already checked against ours).
#[derive(Debug, Clone)]
pub struct PeerVersion {
    pub protocol_version: u32,
    pub network: String,
    pub user_agent: String,
}

#[derive(Debug)]
pub enum HandshakeError {
    Rejected(String),
    WrongNetwork(String),
    Closed(String),
    Timeout(&'static str),
}

impl HandshakeError {
    /// The stream or its connection failed (as opposed to the peer refusing us).
    pub fn is_transport(&self) -> bool {
        matches!(self, Self::Closed(_) | Self::Timeout(_))
    }
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rejected(reason) => write!(f, "rejected by the peer: {}", clip(reason)),
            Self::WrongNetwork(network) => write!(f, "peer is on network {}", clip(network)),
            Self::Closed(reason) => write!(f, "stream closed: {}", clip(reason)),
            Self::Timeout(step) => write!(f, "timed out waiting for {step}"),
        }
    }
}

/// Remote-controlled text as it goes into a log line: at most `CLIP` characters.
pub fn clip(text: &str) -> String {
    const CLIP: usize = 200;
    match text.char_indices().nth(CLIP) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// The connection facts every handshake event carries.
fn facts(info: &ConnectionInfo) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    map.insert("peer_id".into(), json!(info.peer_id.to_string()));
    map.insert("connection_id".into(), json!(info.connection_number()));
    map.insert("relayed".into(), json!(info.relayed));
    map
}

fn step(info: &ConnectionInfo, name: &str) {
    let mut map = facts(info);
    map.insert("step".into(), json!(name));
    emit("handshake_step", serde_json::Value::Object(map));
}

type Inbound = Pin<Box<dyn FuturesStream<Item = Result<KaspadMessage, Status>> + Send>>;

/// Runs the handshake on one stream. `tx` sends to the peer, `rx` receives from it. `initiator` sends its
/// Version first (the dialing client); the other side sends its Version on receiving the peer's.
pub async fn handshake(
    local: &Local,
    info: &ConnectionInfo,
    tx: &mpsc::Sender<KaspadMessage>,
    rx: &mut Inbound,
    initiator: bool,
    first: Option<KaspadMessage>,
) -> Result<PeerVersion, HandshakeError> {
    let send = |msg: KaspadMessage| async move {
        tx.send(msg)
            .await
            .map_err(|_| HandshakeError::Closed("send side closed".into()))
    };
    let (mut version_sent, mut verack_sent, mut verack_received, mut ready_sent) =
        (false, false, false, false);
    let mut peer_version: Option<PeerVersion> = None;
    if initiator {
        send(local.version()).await?;
        version_sent = true;
        step(info, "version_sent");
    }
    let mut pending = first;
    loop {
        let next = match pending.take() {
            Some(msg) => msg,
            None => match tokio::time::timeout(STEP_TIMEOUT, rx.next()).await {
                Err(_) => return Err(HandshakeError::Timeout("the peer's handshake message")),
                Ok(None) => return Err(HandshakeError::Closed("peer ended the stream".into())),
                Ok(Some(Err(status))) => {
                    return Err(HandshakeError::Closed(status.message().to_string()))
                }
                Ok(Some(Ok(msg))) => msg,
            },
        };
        match next.payload {
            Some(Payload::Version(version)) => {
                step(info, "version_received");
                let expected = format!("kaspa-{}", local.network);
                if version.network != expected {
                    let reason = format!(
                        "network mismatch: local {expected}, remote {}",
                        version.network
                    );
                    let _ = send(message(Payload::Reject(RejectMessage {
                        reason: reason.clone(),
                    })))
                    .await;
                    let mut map = facts(info);
                    map.insert("reason".into(), json!(clip(&reason)));
                    emit("reject_sent", serde_json::Value::Object(map));
                    return Err(HandshakeError::WrongNetwork(version.network));
                }
                peer_version = Some(PeerVersion {
                    protocol_version: version.protocol_version,
                    network: version.network,
                    user_agent: version.user_agent,
                });
                if !version_sent {
                    send(local.version()).await?;
                    version_sent = true;
                    step(info, "version_sent");
                }
                send(message(Payload::Verack(VerackMessage {}))).await?;
                verack_sent = true;
                step(info, "verack_sent");
            }
            Some(Payload::Verack(_)) => {
                verack_received = true;
                step(info, "verack_received");
            }
            Some(Payload::Ready(_)) => {
                step(info, "ready_received");
                if !ready_sent {
                    send(message(Payload::Ready(ReadyMessage {}))).await?;
                    step(info, "ready_sent");
                }
                return peer_version.ok_or(HandshakeError::Closed("Ready before Version".into()));
            }
            Some(Payload::Reject(reject)) => {
                let mut map = facts(info);
                map.insert("reason".into(), json!(clip(&reject.reason)));
                emit("reject_received", serde_json::Value::Object(map));
                return Err(HandshakeError::Rejected(reject.reason));
            }
            _ => {}
        }
        if verack_sent && verack_received && !ready_sent {
            send(message(Payload::Ready(ReadyMessage {}))).await?;
            ready_sent = true;
            step(info, "ready_sent");
        }
    }
}

/// `kaspa_ping` / `kaspa_pong` with the connection facts: on the client the ping it sent and the pong that came
/// back (with `rtt_ms`), on the server the ping that came in and the pong it sent.
fn log_nonce(event: &str, info: &ConnectionInfo, nonce: u64, rtt: Option<Duration>) {
    let mut map = facts(info);
    map.insert("nonce".into(), json!(nonce));
    if let Some(rtt) = rtt {
        map.insert(
            "rtt_ms".into(),
            json!((rtt.as_secs_f64() * 1000.0 * 100.0).round() / 100.0),
        );
    }
    emit(event, serde_json::Value::Object(map));
}

fn complete(info: &ConnectionInfo, peer: &PeerVersion) {
    let mut map = facts(info);
    map.insert("remote_addr".into(), json!(info.remote_addr.to_string()));
    map.insert("network".into(), json!(peer.network));
    map.insert("protocol_version".into(), json!(peer.protocol_version));
    map.insert("user_agent".into(), json!(clip(&peer.user_agent)));
    emit("handshake_complete", serde_json::Value::Object(map));
}

// ---- server side --------------------------------------------------------------------------------------

#[derive(Clone)]
struct Service {
    local: Local,
}

#[tonic::async_trait]
impl P2p for Service {
    type MessageStreamStream = ReceiverStream<Result<KaspadMessage, Status>>;

    async fn message_stream(
        &self,
        request: Request<Streaming<KaspadMessage>>,
    ) -> Result<Response<Self::MessageStreamStream>, Status> {
        let info = request
            .extensions()
            .get::<ConnectionInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("stream without connection facts"))?;
        let mut inbound: Inbound = Box::pin(request.into_inner());
        let (out_tx, out_rx) = mpsc::channel::<Result<KaspadMessage, Status>>(64);
        let (tx, mut rx) = mpsc::channel::<KaspadMessage>(64);
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                if out_tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
        });
        let local = self.local.clone();
        tokio::spawn(async move { serve_stream(local, info, tx, &mut inbound).await });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}

/// One inbound stream: a handshake when it opens with Version, then Pong for every Ping until it ends.
async fn serve_stream(
    local: Local,
    info: ConnectionInfo,
    tx: mpsc::Sender<KaspadMessage>,
    inbound: &mut Inbound,
) {
    let mut first = match inbound.next().await {
        Some(Ok(msg)) => Some(msg),
        _ => return,
    };
    if matches!(
        first.as_ref().and_then(|m| m.payload.as_ref()),
        Some(Payload::Version(_))
    ) {
        match handshake(&local, &info, &tx, inbound, false, first.take()).await {
            Ok(peer) => complete(&info, &peer),
            Err(error) => {
                let mut map = facts(&info);
                map.insert("reason".into(), json!(error.to_string()));
                emit("handshake_failed", serde_json::Value::Object(map));
                return;
            }
        }
    }
    loop {
        let msg = match first.take() {
            Some(msg) => msg,
            None => match inbound.next().await {
                Some(Ok(msg)) => msg,
                _ => return,
            },
        };
        if let Some(Payload::Ping(ping)) = msg.payload {
            log_nonce("kaspa_ping", &info, ping.nonce, None);
            if tx
                .send(message(Payload::Pong(PongMessage { nonce: ping.nonce })))
                .await
                .is_err()
            {
                return;
            }
            log_nonce("kaspa_pong", &info, ping.nonce, None);
        }
    }
}

/// Serves the P2P service on every stream `incoming` yields, until it ends.
pub async fn serve(
    local: Local,
    incoming: mpsc::Receiver<KaspaIo>,
) -> Result<(), tonic::transport::Error> {
    serve_streams(local, ReceiverStream::new(incoming)).await
}

/// [`serve`] over any byte streams that know their connection facts.
pub async fn serve_streams<IO>(
    local: Local,
    incoming: impl FuturesStream<Item = IO> + Send + 'static,
) -> Result<(), tonic::transport::Error>
where
    IO: AsyncRead + AsyncWrite + Connected<ConnectInfo = ConnectionInfo> + Send + Unpin + 'static,
{
    let incoming = incoming.map(Ok::<_, io::Error>);
    Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .add_service(
            P2pServer::new(Service { local })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming(incoming)
        .await
}

// ---- client side --------------------------------------------------------------------------------------

/// A gRPC session over one libp2p stream: the send half and the peer's messages.
pub struct Session {
    pub info: ConnectionInfo,
    pub tx: mpsc::Sender<KaspadMessage>,
    pub rx: Inbound,
}

/// Opens `protowire.P2P/MessageStream` over `io`.
pub async fn open(io: KaspaIo) -> Result<Session, String> {
    let info = io.info.clone();
    open_on(io, info).await
}

/// [`open`] over any byte stream, reporting `info` as its connection facts.
pub async fn open_on<IO>(io: IO, info: ConnectionInfo) -> Result<Session, String>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let slot = Arc::new(Mutex::new(Some(io)));
    let connector = tower::service_fn(move |_| {
        let taken = slot.lock().ok().and_then(|mut slot| slot.take());
        async move {
            taken
                .map(TokioIo::new)
                .ok_or_else(|| io::Error::other("the libp2p stream is already in use"))
        }
    });
    // The URI only names the HTTP/2 authority; the bytes go over the libp2p stream the connector hands out.
    let channel = Endpoint::from_static("http://kaspa.p2p")
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("HTTP/2 over the libp2p stream failed: {e}"))?;
    let mut client = P2pClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<KaspadMessage>(64);
    let response = client
        .message_stream(ReceiverStream::new(rx))
        .await
        .map_err(|status| format!("MessageStream call failed: {}", status.message()))?;
    Ok(Session {
        info,
        tx,
        rx: Box::pin(response.into_inner()),
    })
}

/// Client: handshake on `session`, logging `handshake_complete` with the connection's facts.
pub async fn client_handshake(local: &Local, session: &mut Session) -> Result<(), HandshakeError> {
    let peer = handshake(
        local,
        &session.info,
        &session.tx,
        &mut session.rx,
        true,
        None,
    )
    .await?;
    complete(&session.info, &peer);
    Ok(())
}

/// One ping and its pong on `session`; logs both with the connection facts.
pub async fn ping(session: &mut Session, nonce: u64) -> Result<Duration, String> {
    log_nonce("kaspa_ping", &session.info, nonce, None);
    let began = Instant::now();
    session
        .tx
        .send(message(Payload::Ping(PingMessage { nonce })))
        .await
        .map_err(|_| "stream closed before ping".to_string())?;
    loop {
        match tokio::time::timeout(STEP_TIMEOUT, session.rx.next()).await {
            Err(_) => return Err(format!("no pong for nonce {nonce}")),
            Ok(None) | Ok(Some(Err(_))) => return Err("stream closed before pong".into()),
            Ok(Some(Ok(KaspadMessage {
                payload: Some(Payload::Pong(pong)),
                ..
            }))) if pong.nonce == nonce => {
                let rtt = began.elapsed();
                log_nonce("kaspa_pong", &session.info, nonce, Some(rtt));
                return Ok(rtt);
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::swarm::ConnectionId;
    use libp2p::PeerId;
    use tokio::io::DuplexStream;

    /// An in-memory byte stream standing in for a libp2p stream.
    struct Pipe(DuplexStream, ConnectionInfo);

    impl AsyncRead for Pipe {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl Connected for Pipe {
        type ConnectInfo = ConnectionInfo;
        fn connect_info(&self) -> ConnectionInfo {
            self.1.clone()
        }
    }

    fn info() -> ConnectionInfo {
        ConnectionInfo {
            peer_id: PeerId::random(),
            connection_id: ConnectionId::new_unchecked(7),
            remote_addr: "/ip4/198.18.0.3/tcp/4012".parse().expect("addr"),
            relayed: false,
            dialer: true,
        }
    }

    /// A server on `network` with `streams` client pipes connected to it.
    fn server(network: &str, streams: usize) -> Vec<Pipe> {
        let (tx, rx) = mpsc::channel(streams);
        let mut clients = Vec::new();
        for _ in 0..streams {
            let (a, b) = tokio::io::duplex(64 << 10);
            tx.try_send(Pipe(b, info())).expect("queue");
            clients.push(Pipe(a, info()));
        }
        let local = Local::new(network.into());
        tokio::spawn(async move {
            let _open = tx; // the server keeps accepting while the test runs
            serve_streams(local, ReceiverStream::new(rx)).await
        });
        clients
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text() {
        assert_eq!(clip("kaspa-devnet"), "kaspa-devnet");
        let long = "x".repeat(10_000);
        assert_eq!(clip(&long).len(), 203);
    }

    #[tokio::test]
    async fn handshake_then_ping_over_grpc() {
        let pipe = server("devnet", 1).pop().expect("pipe");
        let info = pipe.1.clone();
        let mut session = open_on(pipe, info).await.expect("open");
        let local = Local::new("devnet".into());
        client_handshake(&local, &mut session)
            .await
            .expect("handshake");
        ping(&mut session, 42).await.expect("pong");
    }

    #[tokio::test]
    async fn wrong_network_gets_reject() {
        let pipe = server("devnet", 1).pop().expect("pipe");
        let info = pipe.1.clone();
        let mut session = open_on(pipe, info).await.expect("open");
        let local = Local::new("testnet-10".into());
        match client_handshake(&local, &mut session).await {
            Err(HandshakeError::Rejected(reason)) => assert!(reason.contains("kaspa-testnet-10")),
            other => panic!("expected Reject, got {other:?}"),
        }
    }

    /// Multi-megabyte messages in both directions (tonic's default limit is 4 MiB, and the PoC hit
    /// FRAME_SIZE_ERROR with default HTTP/2 settings): a 5 MiB network name goes out in Version and comes
    /// back inside the Reject.
    #[tokio::test]
    async fn kaspa_sized_messages_cross_the_bridge() {
        let pipe = server("devnet", 1).pop().expect("pipe");
        let info = pipe.1.clone();
        let mut session = open_on(pipe, info).await.expect("open");
        let huge = "x".repeat(5 << 20);
        let local = Local::new(huge.clone());
        match client_handshake(&local, &mut session).await {
            Err(HandshakeError::Rejected(reason)) => {
                assert!(reason.len() > 5 << 20);
                assert!(reason.contains(&huge));
            }
            other => panic!(
                "expected Reject, got {:?}",
                other.map_err(|e| clip(&e.to_string()))
            ),
        }
    }
}
