//! The client's run as a state machine: which connection to the server it waits for, which one the session
//! runs on, and when it gives up. [`Client::step`] takes what happened ([`Input`]) and says what to do
//! ([`Action`]); it does no I/O, so the binary (`kaspa_p2p_client`) drives it and the unit tests below walk
//! it through every path.
//!
//! ```text
//! ReachingRelays --relay's identify, or OBSERVE_GRACE after the relay dial--> ReachingServer   [DialServer]
//! ReachingServer --relayed connection to the server--------------------------> AwaitingDirect
//! AwaitingDirect --relayed connection closed---------------------------------> ReachingServer
//! AwaitingDirect --DCUtR ok / the server's punch after INBOUND_GRACE----------> InSession       [UseDirect]
//! AwaitingDirect --direct deadline, fallback allowed--------------------------> InSession       [FallBack]
//! ReachingServer --relayed connection, LAB_LIE_DIRECT--------------------------> InSession       [LieDirect]
//! InSession      --the session's connection closed---------------------------> Done  [ReportLost, Exit 3]
//! any            --failure, or the session's end----------------------------> Done            [Exit]
//! ```
//!
//! In session, losing any other connection (the relayed one, the relay itself) changes nothing: a session on
//! a direct connection outlives the relay. A session whose stream fails waits up to [`LOST_GRACE`] for its
//! connection's close (the two race): then it is lost (exit 3), else it failed (exit 1).

use std::time::Duration;

use libp2p::swarm::ConnectionId;
use libp2p::PeerId;
use tokio::time::Instant;

use crate::node::{EXIT_FAILED, EXIT_SESSION_LOST};
use crate::streams;

/// How long to wait for the relay's identify (our observed address) before dialling the server anyway.
pub const OBSERVE_GRACE: Duration = Duration::from_secs(5);
/// No relayed connection to the server this long after the relay dial's grace: the run has failed.
pub const REACH_DEADLINE: Duration = Duration::from_secs(30);
/// How long a direct connection opened by the server's DCUtR dial waits for our own DCUtR result.
pub const INBOUND_GRACE: Duration = Duration::from_secs(1);
/// How long a session whose stream failed waits for its connection's close before it counts as failed, not
/// lost (the stream error and the swarm's `ConnectionClosed` arrive in either order).
pub const LOST_GRACE: Duration = Duration::from_secs(2);

/// What the client was told to do.
#[derive(Debug, Clone)]
pub struct Settings {
    pub remote: PeerId,
    pub dcutr: bool,
    pub fallback: bool,
    pub direct_deadline: Duration,
    /// The lying-peer control ([`crate::lie`]): run the session on the relayed connection, claimed direct.
    pub lie: bool,
}

/// How far the session got (the `stage` fact of `session_lost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The handshake stream is being opened or the handshake runs.
    Handshake,
    /// The handshake completed; pings run.
    Session,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::Session => "session",
        }
    }
}

/// Why the session task stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFailure {
    pub reason: String,
    /// The stream or its connection failed (closed, timed out), as opposed to the peer refusing us (Reject,
    /// wrong network).
    pub transport: bool,
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Dialling the relays; the server is dialled once a relay's identify arrives (our observed address, which
    /// DCUtR needs) or `OBSERVE_GRACE` after the relay dial.
    ReachingRelays,
    /// The server is dialled through the relay; no relayed connection to it (yet, or any more).
    ReachingServer,
    /// A relayed connection to the server is up; DCUtR has until `deadline` to bring a direct one.
    AwaitingDirect {
        relayed: ConnectionId,
        deadline: Instant,
    },
    /// The handshake and session run on `conn` (direct, or the relayed one on fallback or for the liar).
    InSession { conn: ConnectionId, stage: Stage },
    /// An `Exit` was returned.
    Done,
}

/// Where a direct connection came from (the `source` fact of `direct_connection` and `session_connection`):
/// `Dcutr` (our own DCUtR dial; the `dcutr` ok names the same connection) or `Inbound` (the server's DCUtR
/// dial reached our listener; the server's log has the `dcutr` ok).
pub use crate::session::Source;

/// What happened.
#[derive(Debug)]
pub enum Input {
    /// The relays were dialled.
    RelaysDialled,
    /// A relay's identify (with our observed address) arrived.
    RelayIdentified,
    Established {
        peer: PeerId,
        conn: ConnectionId,
        /// A `/p2p-circuit` connection.
        circuit: bool,
        /// We are the listener (the remote dialled us).
        inbound: bool,
    },
    Closed {
        conn: ConnectionId,
        /// libp2p's reason, if it gave one.
        cause: Option<String>,
    },
    DialFailed {
        peer: PeerId,
        reason: String,
    },
    DcutrOk {
        peer: PeerId,
        conn: ConnectionId,
    },
    /// The session's handshake completed.
    HandshakeDone,
    SessionEnded(Result<(), SessionFailure>),
    /// Time passed (the driver calls this at [`Client::wake_at`]).
    Tick,
}

/// What to do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Dial the server through the relay (the circuit addrs, in order).
    DialServer,
    /// Log `direct_connection`, close the relayed connection `close` (so no Kaspa byte crosses the relay) and
    /// run the session on `conn`.
    UseDirect {
        conn: ConnectionId,
        source: Source,
        close: Option<ConnectionId>,
    },
    /// Log `relay_fallback` and run the session on the relayed connection `conn`.
    FallBack { conn: ConnectionId, reason: String },
    /// The lying-peer control: claim the relayed connection `conn` is a direct one DCUtR punched (log it so)
    /// and run the session on it.
    LieDirect { conn: ConnectionId },
    /// Log `dial_failed` for the server.
    ReportDialFailed { reason: String },
    /// Log `handshake_failed` (stage handshake) or `session_failed` (stage session) for the session's
    /// connection.
    ReportFailed { stage: Stage, reason: String },
    /// Log `session_lost`: the connection the session ran on closed under it.
    ReportLost { stage: Stage, reason: String },
    /// Log `shutdown` and exit with `code`.
    Exit { reason: String, code: i32 },
}

/// The open connections, as far as the machine needs to know them.
pub trait Connections {
    /// An open, non-relayed connection (not a circuit, not to a relay's address).
    fn is_direct(&self, conn: ConnectionId) -> bool;
    /// An open connection, relayed or not.
    fn is_open(&self, conn: ConnectionId) -> bool;
}

impl Connections for streams::Behaviour {
    fn is_direct(&self, conn: ConnectionId) -> bool {
        self.connection(conn).is_some_and(|c| !c.relayed)
    }
    fn is_open(&self, conn: ConnectionId) -> bool {
        self.connection(conn).is_some()
    }
}

/// A session whose stream failed while its connection still looked open: lost if the close follows by
/// `until`, failed otherwise.
#[derive(Debug, Clone)]
struct Failing {
    reason: String,
    until: Instant,
}

/// A direct connection the server's DCUtR dial opened to our listener, used at `use_at` unless our own DCUtR
/// dial succeeds first (then the `dcutr` event and the handshake name one connection).
#[derive(Debug, Clone, Copy)]
struct Inbound {
    conn: ConnectionId,
    use_at: Instant,
}

#[derive(Debug)]
pub struct Client {
    settings: Settings,
    phase: Phase,
    /// No relayed connection by then: fail (only before the session, while none is up).
    reach_by: Instant,
    /// Dial the server by then even without the relay's identify (set when the relays are dialled).
    observe_by: Option<Instant>,
    inbound: Option<Inbound>,
    failing: Option<Failing>,
}

impl Client {
    pub fn new(settings: Settings, now: Instant) -> Self {
        Self {
            settings,
            phase: Phase::ReachingRelays,
            reach_by: now + REACH_DEADLINE + OBSERVE_GRACE,
            observe_by: None,
            inbound: None,
            failing: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When the driver must call `step(Input::Tick)` next, if ever.
    pub fn wake_at(&self) -> Option<Instant> {
        let inbound = self.inbound.map(|i| i.use_at);
        let phase = match self.phase {
            Phase::ReachingRelays => [Some(self.reach_by), self.observe_by]
                .into_iter()
                .flatten()
                .min(),
            Phase::ReachingServer => Some(self.reach_by),
            Phase::AwaitingDirect { deadline, .. } => Some(deadline),
            Phase::InSession { .. } => return self.failing.as_ref().map(|f| f.until),
            Phase::Done => return None,
        };
        [phase, inbound].into_iter().flatten().min()
    }

    pub fn step(&mut self, input: Input, now: Instant, links: &impl Connections) -> Vec<Action> {
        if self.phase == Phase::Done {
            return Vec::new();
        }
        match input {
            Input::RelaysDialled => self.relays_dialled(now),
            Input::RelayIdentified => self.dial_server(),
            Input::Established {
                peer,
                conn,
                circuit,
                inbound,
            } if peer == self.settings.remote => {
                self.established(conn, circuit, inbound, now, links)
            }
            Input::Closed { conn, cause } => self.closed(conn, cause),
            Input::DialFailed { peer, reason } if peer == self.settings.remote => {
                self.dial_failed(reason)
            }
            Input::DcutrOk { peer, conn } if peer == self.settings.remote => {
                self.adopt(conn, Source::Dcutr, links)
            }
            Input::HandshakeDone => {
                if let Phase::InSession { conn, .. } = self.phase {
                    self.phase = Phase::InSession {
                        conn,
                        stage: Stage::Session,
                    };
                }
                Vec::new()
            }
            Input::SessionEnded(result) => self.session_ended(result, now, links),
            Input::Tick => self.tick(now, links),
            _ => Vec::new(),
        }
    }

    fn before_relayed(&self) -> bool {
        matches!(self.phase, Phase::ReachingRelays | Phase::ReachingServer)
    }

    fn relays_dialled(&mut self, now: Instant) -> Vec<Action> {
        if self.phase == Phase::ReachingRelays {
            self.observe_by = Some(now + OBSERVE_GRACE);
        }
        Vec::new()
    }

    fn dial_server(&mut self) -> Vec<Action> {
        if self.phase != Phase::ReachingRelays {
            return Vec::new();
        }
        self.phase = Phase::ReachingServer;
        self.observe_by = None;
        vec![Action::DialServer]
    }

    fn established(
        &mut self,
        conn: ConnectionId,
        circuit: bool,
        inbound: bool,
        now: Instant,
        links: &impl Connections,
    ) -> Vec<Action> {
        if circuit {
            if self.before_relayed() && self.settings.lie {
                self.phase = Phase::InSession {
                    conn,
                    stage: Stage::Handshake,
                };
                return vec![Action::LieDirect { conn }];
            }
            if self.before_relayed() {
                let deadline = now + self.settings.direct_deadline;
                self.phase = Phase::AwaitingDirect {
                    relayed: conn,
                    deadline,
                };
            }
        } else if inbound
            && self.settings.dcutr
            && links.is_direct(conn)
            && matches!(self.phase, Phase::AwaitingDirect { .. })
            && self.inbound.is_none()
        {
            // The server's hole-punch dial arrived here. Our own DCUtR dial may still succeed; if it does not
            // within a moment, this connection is as direct and is used instead.
            self.inbound = Some(Inbound {
                conn,
                use_at: now + INBOUND_GRACE,
            });
        }
        Vec::new()
    }

    fn closed(&mut self, conn: ConnectionId, cause: Option<String>) -> Vec<Action> {
        if let Phase::InSession {
            conn: session,
            stage,
        } = self.phase
        {
            if session == conn {
                // The close's own cause, else what the stream saw, else that it closed.
                let reason = cause
                    .or_else(|| self.failing.take().map(|f| f.reason))
                    .unwrap_or_else(|| "the connection closed".into());
                return self.lost(stage, reason);
            }
        }
        if self.inbound.is_some_and(|i| i.conn == conn) {
            self.inbound = None;
        }
        if matches!(self.phase, Phase::AwaitingDirect { relayed, .. } if relayed == conn) {
            self.phase = Phase::ReachingServer;
        }
        Vec::new()
    }

    fn dial_failed(&mut self, reason: String) -> Vec<Action> {
        if !self.before_relayed() {
            return Vec::new();
        }
        let mut actions = vec![Action::ReportDialFailed { reason }];
        actions.extend(self.exit("could not reach the server through the relay", 1));
        actions
    }

    fn session_ended(
        &mut self,
        result: Result<(), SessionFailure>,
        now: Instant,
        links: &impl Connections,
    ) -> Vec<Action> {
        let Phase::InSession { conn, stage } = self.phase else {
            return Vec::new();
        };
        match result {
            Ok(()) => self.exit("session complete", 0),
            Err(failure) if failure.transport && !links.is_open(conn) => {
                self.lost(stage, failure.reason)
            }
            Err(failure) if failure.transport => {
                self.failing = Some(Failing {
                    reason: failure.reason,
                    until: now + LOST_GRACE,
                });
                Vec::new()
            }
            Err(failure) => self.failed(stage, failure.reason),
        }
    }

    fn failed(&mut self, stage: Stage, reason: String) -> Vec<Action> {
        let mut actions = vec![Action::ReportFailed {
            stage,
            reason: reason.clone(),
        }];
        actions.extend(self.exit(&reason, EXIT_FAILED));
        actions
    }

    fn lost(&mut self, stage: Stage, reason: String) -> Vec<Action> {
        let mut actions = vec![Action::ReportLost { stage, reason }];
        actions.extend(self.exit("the session's connection closed", EXIT_SESSION_LOST));
        actions
    }

    fn tick(&mut self, now: Instant, links: &impl Connections) -> Vec<Action> {
        if let Phase::InSession { stage, .. } = self.phase {
            return match self.failing.take() {
                Some(failing) if now >= failing.until => self.failed(stage, failing.reason),
                pending => {
                    self.failing = pending;
                    Vec::new()
                }
            };
        }
        if self.before_relayed() && now >= self.reach_by {
            return self.exit("no relayed connection to the server", 1);
        }
        if self.phase == Phase::ReachingRelays && self.observe_by.is_some_and(|at| now >= at) {
            return self.dial_server();
        }
        if let Some(inbound) = self.inbound.filter(|i| now >= i.use_at) {
            self.inbound = None;
            let actions = self.adopt(inbound.conn, Source::Inbound, links);
            if !actions.is_empty() {
                return actions;
            }
        }
        match self.phase {
            Phase::AwaitingDirect { relayed, deadline } if now >= deadline => {
                self.no_direct(relayed, links)
            }
            _ => Vec::new(),
        }
    }

    /// The direct deadline passed: a waiting inbound direct connection, else the relay (when allowed).
    fn no_direct(&mut self, relayed: ConnectionId, links: &impl Connections) -> Vec<Action> {
        if let Some(inbound) = self.inbound.take() {
            let actions = self.adopt(inbound.conn, Source::Inbound, links);
            if !actions.is_empty() {
                return actions;
            }
        }
        let reason = format!(
            "no direct connection within {:.1}s of the relayed one",
            self.settings.direct_deadline.as_secs_f64()
        );
        if !self.settings.fallback {
            return self.exit(&reason, 1);
        }
        self.phase = Phase::InSession {
            conn: relayed,
            stage: Stage::Handshake,
        };
        vec![Action::FallBack {
            conn: relayed,
            reason,
        }]
    }

    /// Runs the session on the direct connection `conn`, unless a session already runs or `conn` is not (or
    /// no longer) a direct connection.
    fn adopt(
        &mut self,
        conn: ConnectionId,
        source: Source,
        links: &impl Connections,
    ) -> Vec<Action> {
        let close = match self.phase {
            Phase::ReachingRelays | Phase::ReachingServer => None,
            Phase::AwaitingDirect { relayed, .. } => Some(relayed),
            Phase::InSession { .. } | Phase::Done => return Vec::new(),
        };
        if !links.is_direct(conn) {
            return Vec::new();
        }
        self.phase = Phase::InSession {
            conn,
            stage: Stage::Handshake,
        };
        self.inbound = None;
        vec![Action::UseDirect {
            conn,
            source,
            close,
        }]
    }

    fn exit(&mut self, reason: &str, code: i32) -> Vec<Action> {
        self.phase = Phase::Done;
        vec![Action::Exit {
            reason: reason.to_string(),
            code,
        }]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// The open connections: direct ones in `.0`, relayed ones in `.1`.
    #[derive(Default)]
    struct Links(HashSet<ConnectionId>, HashSet<ConnectionId>);

    impl Connections for Links {
        fn is_direct(&self, conn: ConnectionId) -> bool {
            self.0.contains(&conn)
        }
        fn is_open(&self, conn: ConnectionId) -> bool {
            self.0.contains(&conn) || self.1.contains(&conn)
        }
    }

    struct Run {
        client: Client,
        links: Links,
        start: Instant,
        server: PeerId,
    }

    fn id(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    /// The relayed connection, the one our DCUtR dial opened, the one the server's punch opened to us.
    const RELAYED: usize = 1;
    const PUNCHED: usize = 2;
    const INBOUND: usize = 3;

    fn run(dcutr: bool, fallback: bool) -> Run {
        run_with(dcutr, fallback, false)
    }

    fn run_with(dcutr: bool, fallback: bool, lie: bool) -> Run {
        let server = PeerId::random();
        let start = Instant::now();
        let settings = Settings {
            remote: server,
            dcutr,
            fallback,
            direct_deadline: Duration::from_secs(15),
            lie,
        };
        Run {
            client: Client::new(settings, start),
            links: Links::default(),
            start,
            server,
        }
    }

    impl Run {
        fn at(&mut self, secs: f64, input: Input) -> Vec<Action> {
            let now = self.start + Duration::from_secs_f64(secs);
            self.client.step(input, now, &self.links)
        }

        /// Relays dialled at 0 s, identify at 0.1 s, the relayed connection at 0.2 s.
        fn relayed(&mut self) {
            assert!(self.at(0.0, Input::RelaysDialled).is_empty());
            assert_eq!(
                self.at(0.1, Input::RelayIdentified),
                vec![Action::DialServer]
            );
            let established = self.established(RELAYED, true, false);
            assert!(self.at(0.2, established).is_empty());
            assert!(matches!(
                self.client.phase(),
                Phase::AwaitingDirect { relayed, .. } if relayed == id(RELAYED)
            ));
        }

        fn established(&mut self, conn: usize, circuit: bool, inbound: bool) -> Input {
            let conn = id(conn);
            if circuit {
                self.links.1.insert(conn);
            } else {
                self.links.0.insert(conn);
            }
            Input::Established {
                peer: self.server,
                conn,
                circuit,
                inbound,
            }
        }

        /// A connection closes (as libp2p reports it: gone from the behaviour first, then the event).
        fn close(&mut self, secs: f64, conn: usize, cause: Option<&str>) -> Vec<Action> {
            self.links.0.remove(&id(conn));
            self.links.1.remove(&id(conn));
            self.at(
                secs,
                Input::Closed {
                    conn: id(conn),
                    cause: cause.map(str::to_string),
                },
            )
        }

        /// Relayed, then our DCUtR dial's connection, the session on it and its handshake done at 1.5 s.
        fn direct_session(&mut self) {
            self.relayed();
            let punched = self.established(PUNCHED, false, false);
            self.at(1.0, punched);
            let server = self.server;
            self.at(
                1.0,
                Input::DcutrOk {
                    peer: server,
                    conn: id(PUNCHED),
                },
            );
            assert!(self.at(1.5, Input::HandshakeDone).is_empty());
            assert_eq!(
                self.client.phase(),
                Phase::InSession {
                    conn: id(PUNCHED),
                    stage: Stage::Session
                }
            );
        }

        fn wake_secs(&self) -> Option<f64> {
            self.client
                .wake_at()
                .map(|at| (at - self.start).as_secs_f64())
        }
    }

    fn exit(reason: &str, code: i32) -> Action {
        Action::Exit {
            reason: reason.into(),
            code,
        }
    }

    fn lost(stage: Stage, reason: &str) -> Vec<Action> {
        vec![
            Action::ReportLost {
                stage,
                reason: reason.into(),
            },
            exit("the session's connection closed", 3),
        ]
    }

    fn transport(reason: &str) -> Input {
        Input::SessionEnded(Err(SessionFailure {
            reason: reason.into(),
            transport: true,
        }))
    }

    #[test]
    fn dcutr_ok_runs_the_session_on_the_punched_connection_and_closes_the_relayed_one() {
        let mut r = run(true, false);
        r.relayed();
        assert_eq!(r.wake_secs(), Some(15.2));
        let punched = r.established(PUNCHED, false, false);
        assert!(r.at(1.0, punched).is_empty());
        let server = r.server;
        assert_eq!(
            r.at(
                1.0,
                Input::DcutrOk {
                    peer: server,
                    conn: id(PUNCHED)
                }
            ),
            vec![Action::UseDirect {
                conn: id(PUNCHED),
                source: Source::Dcutr,
                close: Some(id(RELAYED))
            }]
        );
        assert_eq!(
            r.client.phase(),
            Phase::InSession {
                conn: id(PUNCHED),
                stage: Stage::Handshake
            }
        );
        assert_eq!(r.wake_secs(), None);
        // The relayed connection closing is expected; the session's own is not.
        assert!(r.close(1.1, RELAYED, None).is_empty());
        assert_eq!(
            r.at(2.0, Input::SessionEnded(Ok(()))),
            vec![exit("session complete", 0)]
        );
        assert_eq!(r.client.phase(), Phase::Done);
    }

    #[test]
    fn the_servers_punch_is_used_after_the_inbound_grace() {
        let mut r = run(true, false);
        r.relayed();
        let inbound = r.established(INBOUND, false, true);
        assert!(r.at(1.0, inbound).is_empty());
        assert_eq!(r.wake_secs(), Some(2.0));
        assert!(r.at(1.5, Input::Tick).is_empty());
        assert_eq!(
            r.at(2.0, Input::Tick),
            vec![Action::UseDirect {
                conn: id(INBOUND),
                source: Source::Inbound,
                close: Some(id(RELAYED))
            }]
        );
    }

    #[test]
    fn our_own_dcutr_result_wins_over_a_waiting_inbound_connection() {
        let mut r = run(true, false);
        r.relayed();
        let inbound = r.established(INBOUND, false, true);
        r.at(1.0, inbound);
        let punched = r.established(PUNCHED, false, false);
        r.at(1.2, punched);
        let server = r.server;
        let actions = r.at(
            1.3,
            Input::DcutrOk {
                peer: server,
                conn: id(PUNCHED),
            },
        );
        assert!(matches!(
            actions[..],
            [Action::UseDirect { conn, source: Source::Dcutr, .. }] if conn == id(PUNCHED)
        ));
        assert!(r.at(2.0, Input::Tick).is_empty());
    }

    #[test]
    fn an_inbound_connection_that_closes_is_forgotten() {
        let mut r = run(true, false);
        r.relayed();
        let inbound = r.established(INBOUND, false, true);
        r.at(1.0, inbound);
        assert!(r.close(1.5, INBOUND, None).is_empty());
        assert_eq!(r.wake_secs(), Some(15.2));
    }

    #[test]
    fn without_dcutr_an_inbound_connection_is_not_taken() {
        let mut r = run(false, false);
        r.relayed();
        let inbound = r.established(INBOUND, false, true);
        r.at(1.0, inbound);
        assert_eq!(r.wake_secs(), Some(15.2));
        assert_eq!(
            r.at(15.2, Input::Tick),
            vec![exit(
                "no direct connection within 15.0s of the relayed one",
                1
            )]
        );
    }

    #[test]
    fn the_direct_deadline_takes_a_waiting_inbound_connection_first() {
        let mut r = run(true, false);
        r.relayed();
        let inbound = r.established(INBOUND, false, true);
        r.at(15.0, inbound);
        assert!(matches!(
            r.at(15.2, Input::Tick)[..],
            [Action::UseDirect { conn, source: Source::Inbound, .. }] if conn == id(INBOUND)
        ));
    }

    #[test]
    fn the_direct_deadline_falls_back_to_the_relay_when_allowed() {
        let mut r = run(true, true);
        r.relayed();
        assert_eq!(
            r.at(15.2, Input::Tick),
            vec![Action::FallBack {
                conn: id(RELAYED),
                reason: "no direct connection within 15.0s of the relayed one".into()
            }]
        );
        assert_eq!(
            r.client.phase(),
            Phase::InSession {
                conn: id(RELAYED),
                stage: Stage::Handshake
            }
        );
        r.at(15.5, Input::HandshakeDone);
        // The relay goes away: the session on its circuit dies with it, with its own exit code.
        assert_eq!(
            r.close(16.0, RELAYED, Some("relay gone")),
            lost(Stage::Session, "relay gone")
        );
    }

    #[test]
    fn the_server_is_dialled_after_the_observe_grace_without_identify() {
        let mut r = run(true, false);
        assert_eq!(r.wake_secs(), Some(35.0));
        r.at(2.0, Input::RelaysDialled);
        assert_eq!(r.wake_secs(), Some(7.0));
        assert!(r.at(6.9, Input::Tick).is_empty());
        assert_eq!(r.at(7.0, Input::Tick), vec![Action::DialServer]);
        assert_eq!(r.client.phase(), Phase::ReachingServer);
        // A later identify does not dial again.
        assert!(r.at(7.5, Input::RelayIdentified).is_empty());
        assert_eq!(
            r.at(35.0, Input::Tick),
            vec![exit("no relayed connection to the server", 1)]
        );
    }

    #[test]
    fn a_failed_dial_to_the_server_ends_the_run_before_the_relayed_connection_only() {
        let mut r = run(true, false);
        r.at(0.0, Input::RelaysDialled);
        r.at(0.1, Input::RelayIdentified);
        let other = PeerId::random();
        let failed = |peer| Input::DialFailed {
            peer,
            reason: "refused".into(),
        };
        assert!(r.at(0.2, failed(other)).is_empty());
        let server = r.server;
        assert_eq!(
            r.at(0.3, failed(server)),
            vec![
                Action::ReportDialFailed {
                    reason: "refused".into()
                },
                exit("could not reach the server through the relay", 1)
            ]
        );
        let mut r = run(true, false);
        r.relayed();
        assert!(r.at(1.0, failed(server)).is_empty());
    }

    #[test]
    fn a_lost_relayed_connection_waits_for_another_until_the_reach_deadline() {
        let mut r = run(true, false);
        r.relayed();
        assert!(r.close(1.0, RELAYED, None).is_empty());
        assert_eq!(r.client.phase(), Phase::ReachingServer);
        assert_eq!(r.wake_secs(), Some(35.0));
        let again = 9;
        let established = r.established(again, true, false);
        r.at(2.0, established);
        assert_eq!(r.wake_secs(), Some(17.0));
    }

    #[test]
    fn a_failed_handshake_is_reported_and_exits_1() {
        let mut r = run(true, true);
        r.relayed();
        r.at(15.2, Input::Tick);
        // The peer refusing us is no lost connection: exit 1 at once.
        assert_eq!(
            r.at(
                16.0,
                Input::SessionEnded(Err(SessionFailure {
                    reason: "rejected".into(),
                    transport: false
                }))
            ),
            vec![
                Action::ReportFailed {
                    stage: Stage::Handshake,
                    reason: "rejected".into()
                },
                exit("rejected", 1)
            ]
        );
        assert!(r.at(17.0, Input::Tick).is_empty());
    }

    #[test]
    fn events_of_other_peers_change_nothing() {
        let mut r = run(true, false);
        r.relayed();
        let other = PeerId::random();
        r.links.0.insert(id(PUNCHED));
        assert!(r
            .at(
                1.0,
                Input::DcutrOk {
                    peer: other,
                    conn: id(PUNCHED)
                }
            )
            .is_empty());
        assert!(r
            .at(
                1.0,
                Input::Established {
                    peer: other,
                    conn: id(INBOUND),
                    circuit: false,
                    inbound: true
                }
            )
            .is_empty());
        assert_eq!(r.wake_secs(), Some(15.2));
    }

    #[test]
    fn a_direct_session_outlives_the_relayed_connection_and_the_relay() {
        let mut r = run(true, false);
        r.direct_session();
        // The relayed connection (closed by us) and the connection to the relay (the relay exits) go away.
        const TO_RELAY: usize = 4;
        assert!(r.close(2.0, RELAYED, None).is_empty());
        assert!(r.close(2.1, TO_RELAY, Some("connection reset")).is_empty());
        assert!(r.at(3.0, Input::Tick).is_empty());
        assert_eq!(r.wake_secs(), None);
        assert_eq!(
            r.at(9.5, Input::SessionEnded(Ok(()))),
            vec![exit("session complete", 0)]
        );
    }

    #[test]
    fn losing_the_sessions_own_connection_is_session_lost_with_exit_3() {
        let mut r = run(true, false);
        r.direct_session();
        assert_eq!(
            r.close(3.0, PUNCHED, Some("connection reset")),
            lost(Stage::Session, "connection reset")
        );
        assert_eq!(r.client.phase(), Phase::Done);
        // The session task's own error, arriving later, changes nothing.
        assert!(r.at(3.1, transport("stream closed before pong")).is_empty());
    }

    #[test]
    fn a_connection_lost_during_the_handshake_says_so() {
        let mut r = run(true, false);
        r.relayed();
        let punched = r.established(PUNCHED, false, false);
        r.at(1.0, punched);
        let server = r.server;
        r.at(
            1.0,
            Input::DcutrOk {
                peer: server,
                conn: id(PUNCHED),
            },
        );
        assert_eq!(
            r.close(1.2, PUNCHED, None),
            lost(Stage::Handshake, "the connection closed")
        );
    }

    #[test]
    fn a_stream_error_then_the_close_is_lost_and_without_the_close_failed() {
        // The stream error comes first, the connection's close within the grace: lost, with the stream's
        // reason when libp2p gives none.
        let mut r = run(true, false);
        r.direct_session();
        assert!(r.at(3.0, transport("stream closed before pong")).is_empty());
        assert_eq!(r.wake_secs(), Some(5.0));
        assert_eq!(
            r.close(3.5, PUNCHED, None),
            lost(Stage::Session, "stream closed before pong")
        );

        // The connection is already gone when the error arrives: lost at once.
        let mut r = run(true, false);
        r.direct_session();
        r.links.0.remove(&id(PUNCHED));
        assert_eq!(
            r.at(3.0, transport("stream closed before pong")),
            lost(Stage::Session, "stream closed before pong")
        );

        // The connection stays up: after the grace the session failed (exit 1), it was not lost.
        let mut r = run(true, false);
        r.direct_session();
        r.at(3.0, transport("no pong for nonce 4"));
        assert!(r.at(4.9, Input::Tick).is_empty());
        assert_eq!(
            r.at(5.0, Input::Tick),
            vec![
                Action::ReportFailed {
                    stage: Stage::Session,
                    reason: "no pong for nonce 4".into()
                },
                exit("no pong for nonce 4", 1)
            ]
        );
    }

    #[test]
    fn the_liar_runs_its_session_on_the_relayed_connection_at_once() {
        let mut r = run_with(false, false, true);
        assert!(r.at(0.0, Input::RelaysDialled).is_empty());
        assert_eq!(r.at(0.1, Input::RelayIdentified), vec![Action::DialServer]);
        let relayed = r.established(RELAYED, true, false);
        assert_eq!(
            r.at(0.2, relayed),
            vec![Action::LieDirect { conn: id(RELAYED) }]
        );
        assert_eq!(
            r.client.phase(),
            Phase::InSession {
                conn: id(RELAYED),
                stage: Stage::Handshake
            }
        );
        // No direct deadline, and nothing direct is ever taken.
        assert_eq!(r.wake_secs(), None);
        let inbound = r.established(INBOUND, false, true);
        assert!(r.at(0.5, inbound).is_empty());
        assert!(r.at(2.0, Input::Tick).is_empty());
        // Its session dies with the relay like any relayed one.
        r.at(0.8, Input::HandshakeDone);
        assert_eq!(
            r.close(3.0, RELAYED, None),
            lost(Stage::Session, "the connection closed")
        );
    }
}
