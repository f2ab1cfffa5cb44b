//! Relay, server and client as real processes on loopback: the reservation, the relayed connection, the
//! DCUtR upgrade and the Kaspa handshake on the direct connection, plus the negative paths.

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Node {
    child: Child,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn events(&self) -> Vec<Value> {
        events(&self.log)
    }

    /// Polls the node's log until an event satisfies `want` (the process is real; there is no callback).
    fn wait_for(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(found) = self.events().into_iter().find(|e| want(e)) {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no {what} in {}: {:?}",
            self.log.display(),
            fs::read_to_string(&self.log)
        );
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not exit", self.log.display());
    }
}

fn events(path: &PathBuf) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kaspa-lab-peers-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("tmp dir");
    dir.join(name)
}

fn spawn(binary: &str, log: &str, env: &[(&str, String)]) -> Node {
    let log = tmp(log);
    let out = fs::File::create(&log).expect("log file");
    let mut command = Command::new(binary);
    command.stdout(out).stderr(Stdio::null()).env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    Node {
        child: command.spawn().expect("spawn"),
        log,
    }
}

fn peer_id(node: &Node) -> String {
    node.wait_for("peer_id", |e| e["event"] == "peer_id")["peer_id"]
        .as_str()
        .expect("peer id")
        .to_string()
}

struct Lab {
    relay: Node,
    server: Node,
    relay_addr: String,
    server_id: String,
}

fn lab(tag: &str, server_env: &[(&str, String)]) -> Lab {
    let relay_port = free_port();
    let relay = spawn(
        env!("CARGO_BIN_EXE_kaspa_p2p_relay"),
        &format!("{tag}-relay.log"),
        &[
            (
                "LIBP2P_LISTEN_MULTIADDRS",
                format!("/ip4/127.0.0.1/tcp/{relay_port}"),
            ),
            ("LIBP2P_IDENTITY_SEED", "relay".into()),
        ],
    );
    let relay_id = peer_id(&relay);
    relay.wait_for("listening", |e| e["event"] == "listening");
    let relay_addr = format!("/ip4/127.0.0.1/tcp/{relay_port}/p2p/{relay_id}");
    let mut env = vec![
        (
            "LIBP2P_LISTEN_MULTIADDRS",
            format!("/ip4/127.0.0.1/tcp/{}", free_port()),
        ),
        ("LIBP2P_RELAY_MULTIADDRS", relay_addr.clone()),
        ("LIBP2P_IDENTITY_SEED", "server".into()),
        ("KASPA_NETWORK", "devnet".into()),
    ];
    env.extend(server_env.iter().cloned());
    let server = spawn(
        env!("CARGO_BIN_EXE_kaspa_p2p_server"),
        &format!("{tag}-server.log"),
        &env,
    );
    let server_id = peer_id(&server);
    let accepted = server.wait_for("reservation", |e| e["event"] == "reservation_accepted");
    assert_eq!(accepted["relay_peer_id"], relay_id);
    Lab {
        relay,
        server,
        relay_addr,
        server_id,
    }
}

fn client(lab: &Lab, tag: &str, extra: &[(&str, String)]) -> Node {
    let mut env = vec![
        (
            "LIBP2P_LISTEN_MULTIADDRS",
            format!("/ip4/127.0.0.1/tcp/{}", free_port()),
        ),
        ("LIBP2P_REMOTE_PEER_ID", lab.server_id.clone()),
        (
            "LIBP2P_REMOTE_MULTIADDRS",
            format!("{}/p2p-circuit/p2p/{}", lab.relay_addr, lab.server_id),
        ),
        ("LIBP2P_IDENTITY_SEED", "client".into()),
        ("KASPA_NETWORK", "devnet".into()),
        ("SESSION_SECS", "1".into()),
        ("DIRECT_DEADLINE_SECS", "4".into()),
    ];
    for (key, value) in extra {
        env.retain(|(k, _)| k != key);
        env.push((key, value.clone()));
    }
    spawn(
        env!("CARGO_BIN_EXE_kaspa_p2p_client"),
        &format!("{tag}-client.log"),
        &env,
    )
}

fn find<'a>(events: &'a [Value], event: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == event).collect()
}

#[test]
fn punches_and_handshakes_on_the_direct_connection() {
    let lab = lab("direct", &[]);
    let mut client = client(&lab, "direct", &[]);
    assert!(client.wait_exit().success());
    let events = client.events();
    let client_id = find(&events, "peer_id")[0]["peer_id"].clone();

    let relayed = find(&events, "connection_established");
    assert!(relayed
        .iter()
        .any(|e| e["peer_id"] == lab.server_id.as_str() && e["relayed"] == true));
    let dcutr = find(&events, "dcutr");
    let ok = dcutr
        .iter()
        .find(|e| e["result"] == "ok")
        .expect("dcutr ok");
    assert_eq!(ok["remote_peer_id"], lab.server_id.as_str());
    let handshake = find(&events, "handshake_complete");
    assert_eq!(handshake.len(), 1);
    assert_eq!(handshake[0]["relayed"], false);
    assert_eq!(handshake[0]["connection_id"], ok["connection_id"]);
    assert!(!handshake[0]["remote_addr"]
        .as_str()
        .unwrap_or("")
        .contains("p2p-circuit"));
    assert!(!find(&events, "kaspa_pong").is_empty());

    let server_side = lab
        .server
        .wait_for("handshake", |e| e["event"] == "handshake_complete");
    assert_eq!(server_side["relayed"], false);
    assert_eq!(server_side["peer_id"], client_id);
    let circuit = lab
        .relay
        .wait_for("circuit", |e| e["event"] == "circuit_accepted");
    assert_eq!(circuit["src_peer_id"], client_id);
    assert_eq!(circuit["dst_peer_id"], lab.server_id.as_str());
}

#[test]
fn without_dcutr_there_is_no_direct_connection() {
    let off = [("DCUTR_ENABLED", "false".to_string())];
    let lab = lab("nodcutr", &off);
    let mut client = client(&lab, "nodcutr", &off);
    assert_eq!(client.wait_exit().code(), Some(1));
    let events = client.events();
    assert!(find(&events, "dcutr").is_empty());
    assert!(find(&events, "handshake_complete").is_empty());
    assert!(find(&events, "shutdown")[0]["reason"]
        .as_str()
        .unwrap_or("")
        .contains("no direct connection"));
}

#[test]
fn without_dcutr_the_fallback_runs_over_the_relay_and_says_so() {
    let off = [("DCUTR_ENABLED", "false".to_string())];
    let lab = lab("fallback", &off);
    let mut client = client(
        &lab,
        "fallback",
        &[off[0].clone(), ("ALLOW_RELAY_FALLBACK", "true".into())],
    );
    assert!(client.wait_exit().success());
    let events = client.events();
    assert_eq!(find(&events, "relay_fallback").len(), 1);
    let handshake = find(&events, "handshake_complete");
    assert_eq!(handshake.len(), 1);
    assert_eq!(handshake[0]["relayed"], true);
    let server_side = lab
        .server
        .wait_for("handshake", |e| e["event"] == "handshake_complete");
    assert_eq!(server_side["relayed"], true);
}

#[test]
fn wrong_network_is_rejected() {
    let lab = lab("network", &[]);
    let mut client = client(&lab, "network", &[("KASPA_NETWORK", "testnet-10".into())]);
    assert_eq!(client.wait_exit().code(), Some(1));
    let events = client.events();
    assert_eq!(find(&events, "reject_received").len(), 1);
    assert!(find(&events, "handshake_complete").is_empty());
    lab.server
        .wait_for("reject", |e| e["event"] == "reject_sent");
}

#[test]
fn bad_input_is_one_line_naming_the_variable_and_exit_2() {
    let cases = [
        (
            env!("CARGO_BIN_EXE_kaspa_p2p_relay"),
            "LIBP2P_LISTEN_MULTIADDRS",
            "not/a/multiaddr",
        ),
        (
            env!("CARGO_BIN_EXE_kaspa_p2p_server"),
            "LIBP2P_RELAY_MULTIADDRS",
            "/ip4/127.0.0.1/tcp/1",
        ),
        (
            env!("CARGO_BIN_EXE_kaspa_p2p_client"),
            "LIBP2P_REMOTE_PEER_ID",
            "not-a-peer-id",
        ),
        (
            env!("CARGO_BIN_EXE_kaspa_p2p_client"),
            "KASPA_NETWORK",
            "moonnet",
        ),
    ];
    for (binary, variable, value) in cases {
        let output = Command::new(binary)
            .env_clear()
            .env(variable, value)
            .env("LIBP2P_REMOTE_PEER_ID", if variable == "LIBP2P_REMOTE_PEER_ID" { value } else { "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN" })
            .env("LIBP2P_REMOTE_MULTIADDRS", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{binary} {variable}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(variable), "{stderr}");
    }
}
