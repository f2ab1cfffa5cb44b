//! Relay, server and client as real processes on loopback: the reservation, the relayed connection, the
//! DCUtR upgrade and the Kaspa handshake on the direct connection, plus the negative paths: no DCUtR, the
//! relay leaving mid-session (a direct session lives on, a relayed one dies with exit 3) and the lying-peer
//! control (logs that claim direct over the relayed connection).

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Node {
    child: Child,
    log: PathBuf,
    human: PathBuf,
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
    let human = tmp(&format!("{log}.stderr"));
    let log = tmp(log);
    let out = fs::File::create(&log).expect("log file");
    let err = fs::File::create(&human).expect("stderr file");
    let mut command = Command::new(binary);
    command.stdout(out).stderr(err).env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    Node {
        child: command.spawn().expect("spawn"),
        log,
        human,
    }
}

/// Both logs of a node, as text.
fn all_text(node: &Node) -> String {
    fs::read_to_string(&node.log).unwrap_or_default()
        + &fs::read_to_string(&node.human).unwrap_or_default()
}

const RELAY_SEED: &str = "seed-relay-3b9f";
const SERVER_SEED: &str = "seed-server-c41d";
const CLIENT_SEED: &str = "seed-client-77e0";

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
            ("LIBP2P_IDENTITY_SEED", RELAY_SEED.into()),
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
        ("LIBP2P_IDENTITY_SEED", SERVER_SEED.into()),
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
        ("LIBP2P_IDENTITY_SEED", CLIENT_SEED.into()),
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

/// The one event named `event`.
fn only<'a>(events: &'a [Value], event: &str) -> &'a Value {
    let found = find(events, event);
    assert_eq!(found.len(), 1, "{event}: {found:?}");
    found[0]
}

/// An event's `ts` (RFC 3339, UTC, as the peers write it) in seconds since 1970.
fn ts(event: &Value) -> f64 {
    let text = event["ts"].as_str().expect("ts");
    let number = |range: std::ops::Range<usize>| -> i64 {
        text.get(range)
            .and_then(|part| part.parse().ok())
            .unwrap_or_else(|| panic!("bad ts {text}"))
    };
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    // Days from civil (proleptic Gregorian), as in Howard Hinnant's algorithm.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let seconds = number(11..13) * 3600 + number(14..16) * 60 + number(17..19);
    let fraction: f64 = text
        .get(19..text.len() - 1)
        .filter(|f| f.starts_with('.'))
        .and_then(|f| format!("0{f}").parse().ok())
        .unwrap_or(0.0);
    (days * 86_400 + seconds) as f64 + fraction
}

/// The events after `event` in the same log.
fn after<'a>(events: &'a [Value], event: &Value) -> &'a [Value] {
    let index = events
        .iter()
        .position(|e| e == event)
        .expect("event in log");
    &events[index + 1..]
}

/// Checks a node's session bookkeeping and returns its `session_connection`: one session connection, and
/// every handshake step, the handshake and every ping and pong on that same connection with the same
/// `relayed`; its `source` is backed by the node's own log (`dcutr`: its own `dcutr` ok names it;
/// `inbound`: the remote dialled it; `relay`: a circuit).
fn session_tied(events: &[Value]) -> Value {
    let session = only(events, "session_connection").clone();
    let conn = &session["connection_id"];
    let relayed = &session["relayed"];
    let complete = only(events, "handshake_complete");
    assert_eq!(&complete["connection_id"], conn);
    assert_eq!(&complete["relayed"], relayed);
    assert_eq!(complete["remote_addr"], session["remote_addr"]);
    for name in ["handshake_step", "kaspa_ping", "kaspa_pong"] {
        let found = find(events, name);
        assert!(!found.is_empty(), "no {name}");
        for e in found {
            assert_eq!(&e["connection_id"], conn, "{e}");
            assert_eq!(&e["relayed"], relayed, "{e}");
        }
    }
    // The latest `connection_established` of that id (the liar logs its claim after the truth).
    let established = find(events, "connection_established")
        .into_iter()
        .rev()
        .find(|e| &e["connection_id"] == conn)
        .expect("the session's connection_established");
    let own_dcutr = find(events, "dcutr")
        .into_iter()
        .any(|e| e["result"] == "ok" && &e["connection_id"] == conn);
    match session["source"].as_str() {
        Some("dcutr") => {
            assert!(own_dcutr, "source dcutr without our dcutr ok: {session}");
            assert_eq!(established["endpoint"], "dialer");
        }
        Some("inbound") => {
            assert!(!own_dcutr, "{session}");
            assert_eq!(established["endpoint"], "listener");
            assert_eq!(*relayed, false);
        }
        Some("relay") => assert_eq!(*relayed, true),
        other => panic!("unexpected source {other:?}"),
    }
    // The session's events come after the session connection is named.
    let rest = after(events, &session);
    assert!(rest.iter().any(|e| e["event"] == "handshake_complete"));
    session
}

fn listen_addr(events: &[Value]) -> String {
    find(events, "listening")[0]["addr"]
        .as_str()
        .expect("listen addr")
        .to_string()
}

#[test]
fn punches_and_handshakes_on_the_direct_connection() {
    let lab = lab("direct", &[]);
    let mut client = client(&lab, "direct", &[]);
    assert!(client.wait_exit().success());
    let events = client.events();
    let client_id = find(&events, "peer_id")[0]["peer_id"].clone();
    let client_listen = listen_addr(&events);
    let server_events = lab.server.events();
    let server_listen = listen_addr(&server_events);
    let relay_transport = lab
        .relay_addr
        .split("/p2p/")
        .next()
        .expect("relay transport");

    // Dials reuse the listening port: the relay observes each peer at its listen address.
    let observed = find(&events, "observed_addr");
    assert_eq!(observed[0]["addr"], client_listen.as_str());
    assert_eq!(
        find(&server_events, "observed_addr")[0]["addr"],
        server_listen.as_str()
    );

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
    let direct = find(&events, "direct_connection");
    assert_eq!(direct.len(), 1);
    assert_eq!(direct[0]["connection_id"], ok["connection_id"]);
    assert_eq!(direct[0]["source"], "dcutr");
    // Honest: DCUtR names a connection of its own, not the relayed one (the liar's tell, see below).
    let relayed_id = &relayed
        .iter()
        .find(|e| e["relayed"] == true && e["peer_id"] == lab.server_id.as_str())
        .expect("relayed")["connection_id"];
    assert_ne!(&ok["connection_id"], relayed_id);
    // Either-side bookkeeping: the client's session runs on its DCUtR connection (on loopback its own dial
    // wins; the unit tests walk the inbound case), and says so.
    let session = session_tied(&events);
    assert_eq!(session["source"], "dcutr");
    assert_eq!(session["connection_id"], ok["connection_id"]);
    assert_eq!(session["relayed"], false);

    // The handshake ran on the DCUtR connection, to the server's listen port, not through the relay.
    let handshake = find(&events, "handshake_complete");
    assert_eq!(handshake.len(), 1);
    assert_eq!(handshake[0]["relayed"], false);
    assert_eq!(handshake[0]["connection_id"], ok["connection_id"]);
    assert_eq!(handshake[0]["remote_addr"], server_listen.as_str());
    assert_eq!(handshake[0]["network"], "kaspa-devnet");
    assert_eq!(handshake[0]["protocol_version"], 7);
    let steps: Vec<&str> = find(&events, "handshake_step")
        .iter()
        .filter_map(|e| e["step"].as_str())
        .collect();
    for step in [
        "version_sent",
        "version_received",
        "verack_sent",
        "verack_received",
        "ready_sent",
        "ready_received",
    ] {
        assert!(steps.contains(&step), "{step} missing in {steps:?}");
    }
    assert!(find(&events, "handshake_step")
        .iter()
        .all(|e| e["relayed"] == false && e["connection_id"] == ok["connection_id"]));
    let pongs = find(&events, "kaspa_pong");
    assert!(!pongs.is_empty());
    assert!(pongs.iter().all(|e| e["relayed"] == false));
    // The relayed connection was closed once the direct one was up.
    assert!(find(&events, "connection_closed")
        .iter()
        .any(|e| e["relayed"] == true && e["peer_id"] == lab.server_id.as_str()));
    let shutdown = find(&events, "shutdown");
    assert_eq!(shutdown[0]["exit_code"], 0);

    // The server saw a direct connection too: TCP from the client, not the relay. (Its port is the client's
    // listen port when the client's DCUtR dial could reuse it; on loopback the server's own DCUtR dial
    // often takes that 4-tuple first and libp2p-tcp redials from a fresh port.)
    let server_side = lab
        .server
        .wait_for("handshake", |e| e["event"] == "handshake_complete");
    assert_eq!(server_side["relayed"], false);
    assert_eq!(server_side["peer_id"], client_id);
    let server_remote = server_side["remote_addr"].as_str().unwrap_or("");
    assert!(
        server_remote.starts_with("/ip4/127.0.0.1/tcp/"),
        "{server_remote}"
    );
    assert!(!server_remote.contains("p2p-circuit"));
    assert_ne!(server_remote, relay_transport);
    let server_events = lab.server.events();
    let server_direct = find(&server_events, "connection_established")
        .into_iter()
        .find(|e| e["connection_id"] == server_side["connection_id"])
        .expect("the handshake's connection");
    assert_eq!(server_direct["relayed"], false);
    assert_eq!(server_direct["remote_addr"], server_remote);
    // The server names the connection the client's session arrived on and ties its own events to it: its
    // own DCUtR connection (when the client took the server's punch, or both dials met) or, as on loopback
    // where the client's own dial got through, the connection the client dialled.
    let server_session = session_tied(&server_events);
    assert_eq!(
        server_session["connection_id"],
        server_side["connection_id"]
    );
    assert_eq!(server_session["relayed"], false);
    assert_eq!(server_session["peer_id"], client_id);
    assert!(["dcutr", "inbound"].contains(&server_session["source"].as_str().unwrap_or("")));
    let inbound_circuit = find(&server_events, "connection_established")
        .into_iter()
        .find(|e| e["relayed"] == true)
        .expect("inbound circuit");
    assert_eq!(
        inbound_circuit["remote_addr"],
        format!(
            "{}/p2p-circuit/p2p/{}",
            lab.relay_addr,
            client_id.as_str().unwrap_or("")
        )
        .as_str()
    );

    let circuit = lab
        .relay
        .wait_for("circuit", |e| e["event"] == "circuit_accepted");
    assert_eq!(circuit["src_peer_id"], client_id);
    assert_eq!(circuit["dst_peer_id"], lab.server_id.as_str());
    lab.relay
        .wait_for("circuit closed", |e| e["event"] == "circuit_closed");

    // No log line carries an identity seed.
    for node in [&lab.relay, &lab.server, &client] {
        let text = all_text(node);
        for seed in [RELAY_SEED, SERVER_SEED, CLIENT_SEED] {
            assert!(!text.contains(seed), "{} leaks a seed", node.log.display());
        }
    }
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
    let session = session_tied(&events);
    assert_eq!(session["source"], "relay");
    assert_eq!(
        session["connection_id"],
        only(&events, "relay_fallback")["connection_id"]
    );
    let server_side = lab
        .server
        .wait_for("handshake", |e| e["event"] == "handshake_complete");
    assert_eq!(server_side["relayed"], true);
    lab.server.wait_for("pong", |e| e["event"] == "kaspa_pong");
    assert_eq!(session_tied(&lab.server.events())["source"], "relay");
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
    const RELAY: &str = env!("CARGO_BIN_EXE_kaspa_p2p_relay");
    const SERVER: &str = env!("CARGO_BIN_EXE_kaspa_p2p_server");
    const CLIENT: &str = env!("CARGO_BIN_EXE_kaspa_p2p_client");
    const ID: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    let circuit = format!("/ip4/127.0.0.1/tcp/1/p2p/{ID}/p2p-circuit/p2p/{ID}");
    // (binary, environment, arguments, the variable the error must name)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (
            RELAY,
            vec![("LIBP2P_LISTEN_MULTIADDRS", "not/a/multiaddr")],
            vec![],
            "LIBP2P_LISTEN_MULTIADDRS",
        ),
        (
            RELAY,
            vec![("LIBP2P_LISTEN_MULTIADDRS", "/dns4/relay/tcp/4011")],
            vec![],
            "LIBP2P_LISTEN_MULTIADDRS",
        ),
        (
            RELAY,
            vec![("LIBP2P_IDENTITY_FILE", "/nonexistent/key")],
            vec![],
            "LIBP2P_IDENTITY_FILE",
        ),
        (
            RELAY,
            vec![("IDLE_TIMEOUT_SECS", "soon")],
            vec![],
            "IDLE_TIMEOUT_SECS",
        ),
        (
            SERVER,
            vec![("LIBP2P_RELAY_MULTIADDRS", "/ip4/127.0.0.1/tcp/1")],
            vec![],
            "LIBP2P_RELAY_MULTIADDRS",
        ),
        (
            CLIENT,
            vec![("LIBP2P_REMOTE_MULTIADDRS", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit/p2p/12D3KooWSMDFN5DeFADosuV7UEwjHWQv1ioLEUqgzjGjxYQzxFX6")],
            vec![],
            "LIBP2P_REMOTE_MULTIADDRS",
        ),
        // Empty is unset: the server needs a relay.
        (SERVER, vec![("LIBP2P_RELAY_MULTIADDRS", "")], vec![], "LIBP2P_RELAY_MULTIADDRS"),
        (
            SERVER,
            vec![],
            vec!["--relay", "/ip4/127.0.0.1/tcp/x"],
            "LIBP2P_RELAY_MULTIADDRS",
        ),
        (
            CLIENT,
            vec![("LIBP2P_REMOTE_PEER_ID", "not-a-peer-id")],
            vec![],
            "LIBP2P_REMOTE_PEER_ID",
        ),
        (
            CLIENT,
            vec![],
            vec!["--remote-peer-id", "not-a-peer-id"],
            "LIBP2P_REMOTE_PEER_ID",
        ),
        (
            CLIENT,
            vec![("LIBP2P_REMOTE_MULTIADDRS", "/ip4/127.0.0.1/tcp/1")],
            vec![],
            "LIBP2P_REMOTE_MULTIADDRS",
        ),
        (
            CLIENT,
            vec![("LIBP2P_REMOTE_MULTIADDRS", "garbage")],
            vec![],
            "LIBP2P_REMOTE_MULTIADDRS",
        ),
        (
            CLIENT,
            vec![("KASPA_NETWORK", "moonnet")],
            vec![],
            "KASPA_NETWORK",
        ),
        (
            CLIENT,
            vec![("DCUTR_ENABLED", "maybe")],
            vec![],
            "DCUTR_ENABLED",
        ),
        (
            CLIENT,
            vec![("ALLOW_RELAY_FALLBACK", "perhaps")],
            vec![],
            "ALLOW_RELAY_FALLBACK",
        ),
        (
            CLIENT,
            vec![("DIRECT_DEADLINE_SECS", "-1")],
            vec![],
            "DIRECT_DEADLINE_SECS",
        ),
        (
            CLIENT,
            vec![("SESSION_SECS", "long")],
            vec![],
            "SESSION_SECS",
        ),
        (CLIENT, vec![], vec!["--bogus"], "argv"),
        // The lying-peer control refuses what would make it ambiguous.
        (
            CLIENT,
            vec![("LAB_LIE_DIRECT", "true"), ("DCUTR_ENABLED", "true")],
            vec![],
            "LAB_LIE_DIRECT",
        ),
        (
            CLIENT,
            vec![("LAB_LIE_DIRECT", "true"), ("ALLOW_RELAY_FALLBACK", "true")],
            vec![],
            "LAB_LIE_DIRECT",
        ),
        (
            SERVER,
            vec![("LAB_LIE_DIRECT", "true")],
            vec!["--dcutr"],
            "LAB_LIE_DIRECT",
        ),
        (
            SERVER,
            vec![("LAB_LIE_DIRECT", "maybe")],
            vec![],
            "LAB_LIE_DIRECT",
        ),
    ];
    for (binary, env, args, variable) in cases {
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("LIBP2P_REMOTE_PEER_ID", ID)
            .env("LIBP2P_REMOTE_MULTIADDRS", &circuit)
            .args(&args);
        command.env(
            "LIBP2P_RELAY_MULTIADDRS",
            format!("/ip4/127.0.0.1/tcp/1/p2p/{ID}"),
        );
        for (key, value) in &env {
            command.env(key, value);
        }
        let output = command.output().expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let name = binary.rsplit('/').next().unwrap_or(binary);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{name} {env:?} {args:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: {stderr}");
        assert!(
            stderr.contains(variable),
            "{name} {env:?} {args:?}: {stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{name}: no JSON before the input is valid"
        );
    }
}

fn sigterm(node: &mut Node) -> (ExitStatus, Duration) {
    let pid = node.child.id().to_string();
    let began = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(sent.success());
    let status = node.wait_exit();
    (status, began.elapsed())
}

#[test]
fn sigterm_logs_shutdown_and_exits_0_quickly() {
    let mut lab = lab("sigterm", &[]);
    // A client in the middle of a long session.
    let mut client = client(&lab, "sigterm", &[("SESSION_SECS", "60".into())]);
    client.wait_for("handshake", |e| e["event"] == "handshake_complete");
    for node in [&mut client, &mut lab.server, &mut lab.relay] {
        let (status, took) = sigterm(node);
        assert_eq!(status.code(), Some(0), "{}", node.log.display());
        assert!(took < Duration::from_secs(1), "{took:?}");
        let events = node.events();
        let last = events.last().expect("events");
        assert_eq!(last["event"], "shutdown");
        assert_eq!(last["reason"], "signal");
    }
}

#[test]
fn server_started_before_the_relay_gets_its_reservation() {
    let relay_port = free_port();
    let relay_id = kaspa_lab_peers::identity::from_seed(RELAY_SEED)
        .public()
        .to_peer_id();
    let relay_addr = format!("/ip4/127.0.0.1/tcp/{relay_port}/p2p/{relay_id}");
    let server = spawn(
        env!("CARGO_BIN_EXE_kaspa_p2p_server"),
        "early-server.log",
        &[
            (
                "LIBP2P_LISTEN_MULTIADDRS",
                format!("/ip4/127.0.0.1/tcp/{}", free_port()),
            ),
            ("LIBP2P_RELAY_MULTIADDRS", relay_addr),
            ("LIBP2P_IDENTITY_SEED", SERVER_SEED.into()),
        ],
    );
    // The relay is not up yet: the server could not reach it (not a refused reservation) and retries.
    let unreachable = server.wait_for("failed relay dial", |e| e["event"] == "relay_dial_failed");
    assert_eq!(unreachable["relay_peer_id"], relay_id.to_string().as_str());
    assert_eq!(unreachable["retry_in_secs"], 2);
    assert!(find(&server.events(), "reservation_failed").is_empty());
    let _relay = spawn(
        env!("CARGO_BIN_EXE_kaspa_p2p_relay"),
        "early-relay.log",
        &[
            (
                "LIBP2P_LISTEN_MULTIADDRS",
                format!("/ip4/127.0.0.1/tcp/{relay_port}"),
            ),
            ("LIBP2P_IDENTITY_SEED", RELAY_SEED.into()),
        ],
    );
    let accepted = server.wait_for("reservation", |e| e["event"] == "reservation_accepted");
    assert_eq!(accepted["relay_peer_id"], relay_id.to_string().as_str());
}

#[test]
fn help_documents_every_variable_and_flag() {
    for (binary, wanted) in [
        (
            env!("CARGO_BIN_EXE_kaspa_p2p_relay"),
            &[
                "LIBP2P_LISTEN_MULTIADDRS",
                "LIBP2P_IDENTITY_SEED",
                "--listen",
            ][..],
        ),
        (
            env!("CARGO_BIN_EXE_kaspa_p2p_server"),
            &[
                "LIBP2P_RELAY_MULTIADDRS",
                "KASPA_NETWORK",
                "DCUTR_ENABLED",
                "--relay",
                "LAB_LIE_DIRECT",
            ][..],
        ),
        (
            env!("CARGO_BIN_EXE_kaspa_p2p_client"),
            &[
                "LIBP2P_REMOTE_PEER_ID",
                "LIBP2P_REMOTE_MULTIADDRS",
                "ALLOW_RELAY_FALLBACK",
                "--allow-relay-fallback",
                "DIRECT_DEADLINE_SECS",
                "SESSION_SECS",
                "SESSION_PING_SECS",
                "SESSION_PONGS_AFTER_RELAY_LOSS",
                "IDLE_TIMEOUT_SECS",
                "LAB_LIE_DIRECT",
                "--lie-direct",
            ][..],
        ),
    ] {
        let output = Command::new(binary)
            .arg("--help")
            .env_clear()
            .output()
            .expect("run");
        assert!(output.status.success());
        let text = String::from_utf8_lossy(&output.stdout);
        for word in wanted {
            assert!(text.contains(word), "{binary} --help lacks {word}");
        }
    }
}

/// The session may end early: 4 pongs after the client saw its relay connection close (long before its
/// 30 s are up), exit 0, and every one of those pongs on the session's direct connection after the close.
#[test]
fn a_direct_session_ends_a_few_pongs_after_the_relay_is_gone() {
    let mut lab = lab("early", &[]);
    let mut client = client(
        &lab,
        "early",
        &[
            ("SESSION_SECS", "30".into()),
            ("SESSION_PING_SECS", "0.1".into()),
            ("SESSION_PONGS_AFTER_RELAY_LOSS", "4".into()),
        ],
    );
    let complete = client.wait_for("handshake", |e| e["event"] == "handshake_complete");
    let (status, _) = sigterm(&mut lab.relay);
    assert_eq!(status.code(), Some(0));
    assert_eq!(client.wait_exit().code(), Some(0));
    let events = client.events();
    let session = session_tied(&events);
    let gone = find(&events, "connection_closed")
        .into_iter()
        .find(|e| e["to_relay"] == true)
        .expect("the relay connection's close");
    let pongs_after: Vec<&Value> = after(&events, gone)
        .iter()
        .filter(|e| e["event"] == "kaspa_pong")
        .collect();
    assert!(pongs_after.len() >= 4, "{} pongs", pongs_after.len());
    assert!(pongs_after
        .iter()
        .all(|p| p["connection_id"] == session["connection_id"] && p["relayed"] == false));
    let shutdown = only(&events, "shutdown");
    assert_eq!(shutdown["exit_code"], 0);
    assert!(
        ts(shutdown) - ts(&complete) < 10.0,
        "{}",
        ts(shutdown) - ts(&complete)
    );
    assert!(ts(shutdown) - ts(gone) < 3.0, "{}", ts(shutdown) - ts(gone));
}

/// (b) The relay exits after the handshake: the session on the direct connection keeps pinging for the rest
/// of its 8 s and ends with exit 0; the client logs the relay connection's close and no `session_lost`.
#[test]
fn a_direct_session_outlives_the_relay() {
    let mut lab = lab("outlive", &[]);
    let mut client = client(&lab, "outlive", &[("SESSION_SECS", "8".into())]);
    let complete = client.wait_for("handshake", |e| e["event"] == "handshake_complete");
    assert_eq!(complete["relayed"], false);
    let (status, _) = sigterm(&mut lab.relay);
    assert_eq!(status.code(), Some(0));
    let relay_exit = ts(lab.relay.events().last().expect("relay shutdown"));
    assert_eq!(client.wait_exit().code(), Some(0));
    let events = client.events();
    let session = session_tied(&events);
    assert_eq!(session["relayed"], false);
    assert!(find(&events, "session_lost").is_empty());
    let shutdown = only(&events, "shutdown");
    assert_eq!(shutdown["exit_code"], 0);
    assert_eq!(shutdown["reason"], "session complete");

    // The client saw the relay go, and pinged on afterwards on the session's connection.
    let gone = find(&events, "connection_closed")
        .into_iter()
        .find(|e| e["to_relay"] == true)
        .expect("the relay connection's close");
    assert_ne!(gone["connection_id"], session["connection_id"]);
    let pongs_after: Vec<&Value> = after(&events, gone)
        .iter()
        .filter(|e| e["event"] == "kaspa_pong")
        .collect();
    assert!(pongs_after.len() >= 5, "{} pongs", pongs_after.len());
    // SESSION_SECS is the session's length: pings ran for all 8 s, most of them after the relay's exit.
    let last_pong = ts(pongs_after.last().expect("pong"));
    assert!(
        last_pong - ts(&complete) >= 7.5,
        "{}",
        last_pong - ts(&complete)
    );
    assert!(last_pong - relay_exit >= 5.0, "{}", last_pong - relay_exit);

    // The server answered those pings on its session connection too.
    let server_events = lab.server.events();
    let server_session = session_tied(&server_events);
    let late_pongs = find(&server_events, "kaspa_pong")
        .into_iter()
        .filter(|e| ts(e) > relay_exit + 1.0)
        .count();
    assert!(
        late_pongs >= 5,
        "{late_pongs} server pongs after the relay left"
    );
    assert_eq!(server_session["relayed"], false);
}

/// (c) The same relay exit kills a session that runs over the relay: `session_lost` naming the session's
/// relayed connection, then exit 3.
#[test]
fn a_relayed_session_dies_with_the_relay() {
    let off = ("DCUTR_ENABLED", "false".to_string());
    let mut lab = lab("dies", std::slice::from_ref(&off));
    let mut client = client(
        &lab,
        "dies",
        &[
            off,
            ("ALLOW_RELAY_FALLBACK", "true".into()),
            ("DIRECT_DEADLINE_SECS", "1".into()),
            ("SESSION_SECS", "60".into()),
        ],
    );
    let pong = client.wait_for("pong", |e| e["event"] == "kaspa_pong");
    assert_eq!(pong["relayed"], true);
    let (status, _) = sigterm(&mut lab.relay);
    assert_eq!(status.code(), Some(0));
    let exit = client.wait_exit();
    let events = client.events();
    assert_eq!(exit.code(), Some(3), "{events:?}");
    let session = session_tied(&events);
    assert_eq!(session["source"], "relay");
    let lost = only(&events, "session_lost");
    assert_eq!(lost["connection_id"], session["connection_id"]);
    assert_eq!(lost["relayed"], true);
    assert_eq!(lost["stage"], "session");
    assert!(!lost["reason"].as_str().unwrap_or("").is_empty());
    let last = events.last().expect("events");
    assert_eq!(last["event"], "shutdown");
    assert_eq!(last["exit_code"], 3);
    assert!(find(&events, "session_failed").is_empty());
}

/// (a) The lying-peer control: both peers run the session over the relayed connection and log it as direct.
/// The one tell in the logs is the connection id: the `dcutr` ok, the "direct" connection and every session
/// event name the relayed connection's id (an honest run names a connection of its own, see the direct
/// test). And the relay's exit kills the "direct" session.
#[test]
fn the_liar_claims_direct_over_the_relayed_connection() {
    let lie = ("LAB_LIE_DIRECT", "true".to_string());
    let mut lab = lab("liar", std::slice::from_ref(&lie));
    let mut client = client(&lab, "liar", &[lie, ("SESSION_SECS", "60".into())]);
    client.wait_for("pong", |e| e["event"] == "kaspa_pong");
    lab.server.wait_for("pong", |e| e["event"] == "kaspa_pong");
    // The session runs on the circuit: the relay has not closed it.
    let relay_events = lab.relay.events();
    assert_eq!(find(&relay_events, "circuit_accepted").len(), 1);
    assert!(find(&relay_events, "circuit_closed").is_empty());

    for (events, claimed, peer) in [
        (
            client.events(),
            kaspa_lab_peers::lie::CLIENT_CLAIMS,
            lab.server_id.clone(),
        ),
        (
            lab.server.events(),
            kaspa_lab_peers::lie::SERVER_CLAIMS,
            peer_id(&client),
        ),
    ] {
        assert_eq!(only(&events, "config")["lie_direct"], true);
        assert_eq!(only(&events, "config")["dcutr_enabled"], false);
        let truthful = find(&events, "connection_established")
            .into_iter()
            .find(|e| e["relayed"] == true && e["peer_id"] == peer.as_str())
            .expect("the relayed connection");
        let relayed_id = &truthful["connection_id"];
        // What a log-only chain reads: a direct connection, a DCUtR success, a direct handshake and pings.
        let fake = find(&events, "connection_established")
            .into_iter()
            .find(|e| e["relayed"] == false && e["peer_id"] == peer.as_str())
            .expect("the claimed direct connection");
        assert_eq!(&fake["connection_id"], relayed_id);
        assert_eq!(fake["remote_addr"], claimed);
        let dcutr = only(&events, "dcutr");
        assert_eq!(dcutr["result"], "ok");
        assert_eq!(&dcutr["connection_id"], relayed_id);
        assert_eq!(dcutr["remote_addr"], claimed);
        let session = session_tied(&events);
        assert_eq!(session["source"], "dcutr");
        assert_eq!(session["relayed"], false);
        assert_eq!(&session["connection_id"], relayed_id);
        assert_eq!(session["remote_addr"], claimed);
        let complete = only(&events, "handshake_complete");
        assert_eq!(complete["relayed"], false);
        assert_eq!(complete["remote_addr"], claimed);
        // No honest direct connection exists: every connection to the peer is the relayed one.
        assert!(find(&events, "connection_established")
            .iter()
            .filter(|e| e["peer_id"] == peer.as_str())
            .all(|e| &e["connection_id"] == relayed_id));
    }
    let events = client.events();
    assert_eq!(
        only(&events, "direct_connection")["connection_id"],
        only(&events, "session_connection")["connection_id"]
    );

    // The relay leaves: the "direct" session dies with it, still lying about what it was.
    let (status, _) = sigterm(&mut lab.relay);
    assert_eq!(status.code(), Some(0));
    assert_eq!(client.wait_exit().code(), Some(3));
    let events = client.events();
    let lost = only(&events, "session_lost");
    assert_eq!(
        lost["connection_id"],
        only(&events, "session_connection")["connection_id"]
    );
    assert_eq!(lost["relayed"], false);
    assert_eq!(lost["remote_addr"], kaspa_lab_peers::lie::CLIENT_CLAIMS);
}
