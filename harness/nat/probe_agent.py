#!/usr/bin/env python3
"""dcutr-probe: the in-container half of `dcutr-lab nat probe`. Python 3 standard library only.

Baked into the router image as /usr/local/bin/dcutr-probe. Two roles, both speaking JSON lines over TCP:

  dcutr-probe observe --port 3478 --port 3479
      An observer on the lab's transit network. Per connection it answers requests:
        {"op": "observe"}                       -> {"ok": true, "observed": "<ip:port it sees>"}
        {"op": "dial", "target": "ip:port", "nonce": "..", "timeout": 1.5}
            -> dials `target` from this observer's address (the one the request came in on), says hello with
               the nonce and reports {"ok": true, "result": connected|reset|timeout|unreachable|error,
               "reached": <the prober answered with the nonce>, "from": "<ip:port>", "elapsed": s}
      A connection stays open until the other side closes it, so a prober can hold a mapping.

  dcutr-probe probe --observer IP1 --observer IP2 --ports 3478,3479
      The prober behind a NAT. It prints one JSON object of raw observations (classification happens in
      harness.nat.probe):
        mapping:   from one local port to IP1:p1, IP1:p2 and IP2:p1: the source ip:port each observer saw;
        filtering: from a second local port it contacts IP1:p1 only, then asks IP1 (other port) and IP2 to
                   open a connection to that mapping: did it reach the prober, was it reset, did it time out?
        unmapped:  IP2 dials the external address on a port nothing maps (router's own INPUT behaviour);
        hairpin:   the prober dials its own external mapping.

  dcutr-probe punch --observer IP1 --session S --listen-port 4001
      One side of a TCP hole punch, DCUtR-style. From its listen port it holds a connection to the observer
      (the "relay"), which tells both sides of session S each other's observed address at the same moment;
      then both dial each other from the listen port (SO_REUSEPORT, like libp2p), up to --attempts times.
      Prints {"outcome": connected|accepted|failed, "attempts": [...], ...}.
        {"op": "rendezvous", "session": S, "wait": 30} -> {"ok": true, "you": "ip:port", "peer": "ip:port"}

No traffic goes anywhere but the addresses given on the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import socket
import sys
import threading
import time
import uuid

LINE_LIMIT = 4096


def _reuse(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


def _fmt(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _parse(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def _send(sock: socket.socket, message: dict) -> None:
    sock.sendall((json.dumps(message, separators=(",", ":")) + "\n").encode())


def _recv(sock: socket.socket, timeout: float) -> dict:
    """One JSON line; raises TimeoutError, ConnectionError or ValueError."""
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            raise ConnectionError("closed before a full line")
        data += chunk
        if len(data) > LINE_LIMIT:
            raise ValueError("line too long")
    return json.loads(data.decode())


# -- dialing ------------------------------------------------------------------------------------------------


def dial(target: str, nonce: str, timeout: float, source_ip: str | None = None, source_port: int = 0) -> dict:
    """Open a TCP connection to `target`, say hello with `nonce`, and tell how it went."""
    started = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    result: dict = {"target": target}
    try:
        if source_ip or source_port:
            _reuse(sock)
            sock.bind((source_ip or "0.0.0.0", source_port))
        sock.settimeout(timeout)
        try:
            sock.connect(_parse(target))
        except ConnectionRefusedError:
            result.update(result="reset", reached=False)
            return result
        except TimeoutError:
            result.update(result="timeout", reached=False)
            return result
        except OSError as error:
            unreachable = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}
            result.update(result="unreachable" if error.errno in unreachable else "error", reached=False)
            result["error"] = f"{errno.errorcode.get(error.errno or 0, '?')}: {error.strerror}"
            return result
        result["from"] = _fmt(sock.getsockname())
        result["result"] = "connected"
        try:
            _send(sock, {"op": "hello", "nonce": nonce})
            reply = _recv(sock, timeout)
            result["reached"] = reply.get("nonce") == nonce and reply.get("who") == "prober"
        except (OSError, ValueError) as error:
            result["reached"] = False
            result["error"] = f"no hello reply: {error}"
        return result
    finally:
        result["elapsed"] = round(time.monotonic() - started, 3)
        sock.close()


# -- observer -----------------------------------------------------------------------------------------------


class Observer:
    """Serves observe/dial requests on some TCP ports until stopped."""

    def __init__(self, ports: list[int], host: str = "0.0.0.0") -> None:
        self.ports = ports
        self.host = host
        self._sockets: list[socket.socket] = []
        self._stop = threading.Event()
        self._sessions: dict[str, list[str]] = {}
        self._sessions_changed = threading.Condition()

    def rendezvous(self, session: str, observed: str, wait: float) -> dict:
        """Pair two peers of a session: both get the other's observed address at the same moment."""
        deadline = time.monotonic() + wait
        with self._sessions_changed:
            members = self._sessions.setdefault(session, [])
            members.append(observed)
            self._sessions_changed.notify_all()
            while len(members) < 2:
                left = deadline - time.monotonic()
                if left <= 0:
                    members.remove(observed)
                    return {"ok": False, "error": f"no peer joined session {session!r} within {wait:g}s"}
                self._sessions_changed.wait(left)
        others = [m for m in members[:2] if m != observed]
        return {"ok": True, "you": observed, "peer": others[0] if others else observed}

    def start(self) -> list[int]:
        bound = []
        for port in self.ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # SO_REUSEADDR only: a second observer on the same port must fail, not share it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.listen(64)
            self._sockets.append(sock)
            bound.append(sock.getsockname()[1])
            threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        return bound

    def stop(self) -> None:
        self._stop.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, peer), daemon=True).start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        with conn:
            while not self._stop.is_set():
                try:
                    request = _recv(conn, 300.0)
                except (OSError, ValueError):
                    return
                op = request.get("op")
                if op == "observe":
                    reply = {"ok": True, "observed": _fmt(peer), "observer": _fmt(conn.getsockname())}
                elif op == "dial":
                    outcome = dial(
                        str(request["target"]),
                        str(request.get("nonce", "")),
                        float(request.get("timeout", 1.5)),
                        source_ip=conn.getsockname()[0],
                    )
                    reply = {"ok": True, **outcome}
                elif op == "rendezvous":
                    reply = self.rendezvous(str(request["session"]), _fmt(peer), float(request.get("wait", 30)))
                elif op == "hello":  # someone dialled an observer port as if it were a prober
                    reply = {"ok": True, "nonce": request.get("nonce"), "who": "observer"}
                else:
                    reply = {"ok": False, "error": f"unknown op {op!r}"}
                try:
                    _send(conn, reply)
                except OSError:
                    return


# -- prober -------------------------------------------------------------------------------------------------


class Listener:
    """The prober's listening socket on a mapped port: answers hellos and remembers who said them."""

    def __init__(self, port: int, host: str = "0.0.0.0") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        _reuse(self.sock)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.seen: dict[str, str] = {}  # nonce -> peer ip:port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._hello, args=(conn, peer), daemon=True).start()

    def _hello(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        with conn:
            try:
                request = _recv(conn, 5.0)
                nonce = str(request.get("nonce", ""))
                self.seen[nonce] = _fmt(peer)
                _send(conn, {"nonce": nonce, "who": "prober", "peer": _fmt(peer)})
                conn.settimeout(2.0)
                conn.recv(1)  # let the dialer close first: no TIME_WAIT on the mapped port
            except (OSError, ValueError):
                return

    def close(self) -> None:
        self.sock.close()


class Prober:
    def __init__(self, observers: list[str], ports: list[int], timeout: float, connect_wait: float) -> None:
        if len(observers) < 2 or len(ports) < 2:
            raise SystemExit("dcutr-probe probe needs two observers and two ports")
        self.o1, self.o2 = observers[0], observers[1]
        self.p1, self.p2 = ports[0], ports[1]
        self.timeout = timeout
        self.connect_wait = connect_wait
        self.held: list[socket.socket] = []
        self.errors: list[str] = []

    def _connect(self, host: str, port: int, local_port: int = 0) -> socket.socket:
        """Connect (from `local_port`, shared with a listener through SO_REUSEPORT); retry while refused."""
        deadline = time.monotonic() + self.connect_wait
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            _reuse(sock)
            sock.bind(("0.0.0.0", local_port))
            sock.settimeout(self.timeout * 2)
            try:
                sock.connect((host, port))
                return sock
            except ConnectionRefusedError:
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            except OSError:
                sock.close()
                raise

    def observe(self, host: str, port: int, local_port: int) -> dict:
        record: dict = {"observer": f"{host}:{port}", "local_port": local_port}
        try:
            sock = self._connect(host, port, local_port)
            self.held.append(sock)  # keep the flow (and so the mapping) alive until the end
            record["local"] = _fmt(sock.getsockname())
            _send(sock, {"op": "observe"})
            reply = _recv(sock, self.timeout * 2)
            record["observed"] = reply.get("observed")
        except (OSError, ValueError) as error:
            record["error"] = str(error) or error.__class__.__name__
            self.errors.append(f"observe {host}:{port} from :{local_port}: {record['error']}")
        return record

    def ask_dial(self, host: str, port: int, target: str, listener: Listener | None) -> dict:
        """Ask the observer at host:port to dial `target`, over a fresh control connection."""
        nonce = uuid.uuid4().hex[:12]
        record: dict = {"asked": f"{host}:{port}", "target": target}
        try:
            with self._connect(host, port) as control:
                _send(control, {"op": "dial", "target": target, "nonce": nonce, "timeout": self.timeout})
                reply = _recv(control, self.timeout * 3 + 2)
            record.update({k: v for k, v in reply.items() if k != "ok"})
        except (OSError, ValueError) as error:
            record.update(result="error", reached=False, error=str(error) or error.__class__.__name__)
            self.errors.append(f"dial request to {host}:{port}: {record['error']}")
        if listener is not None:
            record["seen_from"] = listener.seen.get(nonce)
        return record

    def run(self, map_port: int, filter_port: int, unmapped_port: int) -> dict:
        report: dict = {"observers": [self.o1, self.o2], "ports": [self.p1, self.p2]}
        try:
            # Mapping: one local port to three destinations (same address other port, other address).
            report["map_port"] = map_port
            report["mapping"] = [
                self.observe(self.o1, self.p1, map_port),
                self.observe(self.o1, self.p2, map_port),
                self.observe(self.o2, self.p1, map_port),
            ]
            locals_ = [m.get("local") for m in report["mapping"] if m.get("local")]
            report["local_ip"] = _parse(locals_[0])[0] if locals_ else None

            # Filtering: a second local port that contacted IP1:p1 only.
            listener = Listener(filter_port)
            report["filter_port"] = listener.port
            contact = self.observe(self.o1, self.p1, listener.port)
            report["filter_contact"] = contact
            external = contact.get("observed")
            report["filter_external"] = external
            if external:
                report["filtering"] = {
                    # ADF allows this one, APDF does not: same address, another port
                    "same_address_other_port": self.ask_dial(self.o1, self.p2, external, listener),
                    # EIF allows this one: an address the mapping never sent to
                    "other_address": self.ask_dial(self.o2, self.p2, external, listener),
                }
                ext_ip = _parse(external)[0]
                # A port no mapping claims: what the router's own INPUT chain does with a SYN.
                report["unmapped"] = self.ask_dial(self.o2, self.p2, f"{ext_ip}:{unmapped_port}", None)
                # Hairpinning: the prober dials its own external mapping from inside.
                nonce = uuid.uuid4().hex[:12]
                hairpin = dial(external, nonce, self.timeout)
                hairpin["seen_from"] = listener.seen.get(nonce)
                report["hairpin"] = hairpin
            listener.close()
        finally:
            for sock in self.held:
                with contextlib.suppress(OSError):
                    sock.close()
        report["errors"] = self.errors
        return report


class PunchListener(Listener):
    """The punching side's listener: accepts the peer's connection and greets it like a dialer would."""

    nonce = ""

    def _hello(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        with conn:
            try:
                _send(conn, {"op": "hello", "nonce": self.nonce, "who": "punch"})
                hello = _recv(conn, 5.0)
                if hello.get("who") == "punch":
                    self.seen[str(hello.get("nonce"))] = _fmt(peer)
                conn.settimeout(5.0)
                conn.recv(1)
            except (OSError, ValueError):
                return


def punch(
    observer: str, port: int, session: str, listen_port: int, attempts: int, timeout: float, delay: float, wait: float
) -> dict:
    """One side of a simultaneous TCP open through two NATs (see the module docstring)."""
    report: dict = {"session": session, "listen_port": listen_port, "attempts": []}
    listener = PunchListener(listen_port)
    listener.nonce = uuid.uuid4().hex[:12]
    relay = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        _reuse(relay)
        relay.bind(("0.0.0.0", listener.port))
        relay.settimeout(10.0)
        relay.connect((observer, port))
        _send(relay, {"op": "rendezvous", "session": session, "wait": wait})
        meeting = _recv(relay, wait + 5)
        if not meeting.get("ok"):
            report.update(outcome="failed", error=meeting.get("error"))
            return report
        report.update(you=meeting["you"], peer=meeting["peer"])
        if delay > 0:
            time.sleep(delay)
        started = time.monotonic()
        for number in range(1, attempts + 1):
            attempt = _punch_once(meeting["peer"], listener, timeout)
            attempt["attempt"] = number
            attempt["at"] = round(time.monotonic() - started, 3)
            report["attempts"].append(attempt)
            if attempt["result"] in ("connected", "accepted"):
                report["outcome"] = attempt["result"]
                report["took"] = attempt["at"] + attempt.get("elapsed", 0)
                return report
        report["outcome"] = "failed"
        return report
    except (OSError, ValueError) as error:
        report.update(outcome="failed", error=f"{error.__class__.__name__}: {error}")
        return report
    finally:
        relay.close()
        listener.close()


def _punch_once(peer: str, listener: PunchListener, timeout: float) -> dict:
    started = time.monotonic()
    result: dict = {}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        _reuse(sock)
        sock.bind(("0.0.0.0", listener.port))
        sock.settimeout(timeout)
        try:
            sock.connect(_parse(peer))
        except ConnectionRefusedError:
            result["result"] = "reset"
        except TimeoutError:
            result["result"] = "timeout"
        except OSError as error:
            # EADDRNOTAVAIL: the peer's SYN got in first and our listener holds this very 4-tuple
            result["result"] = "error"
            result["error"] = f"{errno.errorcode.get(error.errno or 0, '?')}: {error.strerror}"
        else:
            try:
                _send(sock, {"op": "hello", "nonce": listener.nonce, "who": "punch"})
                hello = _recv(sock, timeout)
                result["result"] = "connected" if hello.get("who") == "punch" else "wrong-peer"
                result["from"] = _fmt(sock.getsockname())
            except (OSError, ValueError) as error:
                result["result"] = "error"
                result["error"] = f"connected, then no hello: {error}"
        if result["result"] != "connected":
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline and not listener.seen:
                time.sleep(0.05)
            if listener.seen:  # the peer's dial reached our listener: the punch worked the other way round
                result["result"] = "accepted"
                result["accepted_from"] = next(iter(listener.seen.values()))
        return result
    finally:
        result["elapsed"] = round(time.monotonic() - started, 3)
        sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dcutr-probe", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    observe = sub.add_parser("observe", help="serve observe/dial requests")
    observe.add_argument("--port", type=int, action="append", required=True)
    observe.add_argument("--bind", default="0.0.0.0")
    probe = sub.add_parser("probe", help="measure the NAT in front of this host, print JSON")
    probe.add_argument("--observer", action="append", required=True, help="an observer's IP (twice)")
    probe.add_argument("--ports", default="3478,3479", help="the observers' two ports")
    probe.add_argument("--map-port", type=int, default=40100)
    probe.add_argument("--filter-port", type=int, default=40200)
    probe.add_argument("--unmapped-port", type=int, default=9)
    probe.add_argument("--timeout", type=float, default=1.5, help="seconds a dial may take")
    probe.add_argument("--connect-wait", type=float, default=15.0, help="seconds to wait for observers")
    hole = sub.add_parser("punch", help="one side of a DCUtR-style TCP hole punch, print JSON")
    hole.add_argument("--observer", required=True, help="the rendezvous observer's IP")
    hole.add_argument("--port", type=int, default=3478)
    hole.add_argument("--session", required=True)
    hole.add_argument("--listen-port", type=int, default=4001)
    hole.add_argument("--attempts", type=int, default=3, help="dials before giving up (DCUtR: 3)")
    hole.add_argument("--timeout", type=float, default=2.0, help="seconds one dial may take")
    hole.add_argument("--delay", type=float, default=0.0, help="seconds to wait after the rendezvous")
    hole.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the other side")
    args = parser.parse_args(argv)

    if args.command == "punch":
        report = punch(
            args.observer, args.port, args.session, args.listen_port, args.attempts, args.timeout, args.delay, args.wait
        )
        print(json.dumps(report, sort_keys=True), flush=True)
        return 0

    if args.command == "observe":
        observer = Observer(args.port, args.bind)
        bound = observer.start()
        print(json.dumps({"observing": bound}), flush=True)
        stop = threading.Event()
        import signal

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        observer.stop()
        return 0

    ports = [int(p) for p in args.ports.split(",")]
    prober = Prober(args.observer, ports, args.timeout, args.connect_wait)
    report = prober.run(args.map_port, args.filter_port, args.unmapped_port)
    print(json.dumps(report, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
