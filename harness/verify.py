"""Verify logs captured anywhere (a user's own machines, an old lab run) against a SUT's checkpoint chains.

`dcutr-lab verify --logs DIR --sut kaspad-bridge` finds one log per node in DIR (`relay.log`, or any file whose
name holds exactly one node name, like `phase4-relay-session.log`), sanitises them, matches the SUT's default
direct and relayed chains (or a runbook's `expect` step) and writes the same report a lab run writes.
Conntrack tables (`<router>.conntrack`, raw `conntrack -L` output) in DIR become the ground truth; without
them the ground-truth checkpoint is reported as skipped.

A file that is not text (NUL bytes, or mostly bytes that are no UTF-8) is refused with one line before any
report exists; what the report says about where the logs came from (the `--logs` directory, conntrack file
names) goes through the run's sanitiser like the logs do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.backends.base import NodeAddresses
from harness.chains import evaluate_chain
from harness.checkpoints import NodeLog
from harness.errors import BadInput
from harness.ground_truth import GroundTruth, NatHop, Side
from harness.models import ChainItem, ExpectedVerdict, Node, Role, ScenarioExpect, Sut, Topology
from harness.results import RouterTable, ScenarioResult, phase_timings, records
from harness.sanitise import Sanitiser, is_placeholder
from harness.sut import LAB, LAB_SUT, get_sut
from harness.verdict import Outcome, as_expected, decide

DEFAULT_NODES = ("relay", "server", "client")
# A log with more undecodable bytes than this share is binary, not a log with a stray Latin-1 character.
MAX_UNDECODABLE = 0.01
LOG_SUFFIXES = (".log", ".txt", ".jsonl", ".out")


@dataclass
class Verification:
    outcome: Outcome
    logs: dict[str, NodeLog]
    files: dict[str, Path]
    start: float | None
    tables: dict[str, tuple[str, str]] | None = None  # router -> (report file, sanitised text)
    placeholders: list[str] | None = None
    sanitiser: Sanitiser | None = None  # for what the report says besides the logs (never written anywhere)
    result: ScenarioResult | None = None  # written when a report was asked for


def discover_logs(
    directory: Path,
    nodes: Sequence[str] = DEFAULT_NODES,
    *,
    sut: Sut | None = None,
    given: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """One file per node: `given` (NAME=FILE, relative to `directory`) first; for the other nodes `<node>.log`,
    then the names the SUT's own labs use (kaspad's `kaspa-a.log`), then the only file naming the node."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInput(f"{directory}: not a directory")
    found: dict[str, Path] = {}
    for node, file in (given or {}).items():
        path = Path(file) if Path(file).is_absolute() else directory / file
        if not path.is_file():
            raise BadInput(f"--node {node}={file}: no such file {path}")
        found[node] = path
    taken = set(found.values())
    files = [p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix in LOG_SUFFIXES and p not in taken]
    aliases = {role.value: names for role, names in (sut.log_names if sut else {}).items()}
    for node in nodes:
        if node in found:
            continue
        stems = [node, *aliases.get(node, [])]
        exact = [p for p in files if p.stem in stems]
        if exact:
            found[node] = exact[0]
            continue
        named = [p for p in files if node in p.stem.lower() and sum(n in p.stem.lower() for n in nodes) == 1]
        if len(named) > 1:
            raise BadInput(
                f"{directory}: several logs for {node}: {', '.join(p.name for p in named)} (use --node {node}=FILE)"
            )
        if named:
            found[node] = named[0]
    if not found:
        raise BadInput(f"{directory}: no log named after a node ({', '.join(nodes)}); use --node NAME=FILE")
    lab_log = directory / f"{LAB}.log"
    if LAB not in found and lab_log in files:  # a lab report's own record (relay stops, holds): its chains name it
        found[LAB] = lab_log
    return found


def verify_logs(
    files: Mapping[str, Path],
    sut_name: str,
    *,
    conntrack_files: Sequence[Path] = (),
    direct: Sequence[ChainItem] | None = None,
    relayed: Sequence[ChainItem] | None = None,
    hash_peer_ids: bool = False,
    clock_skew: float = 2.0,
    public: Mapping[str, str] | None = None,
) -> Verification:
    """Match the logs against the chains; ground truth from `conntrack_files` (a router's events and table,
    named `<node>-router.conntrack` or `<node>.conntrack`) and `public`: each node's public address as the user's
    lab knows it (an address, or a placeholder of a lab report). Without both, the verdict can only be
    `unverified`: the logs alone are the peers' own words."""
    sut = get_sut(sut_name)
    if direct is None:
        if sut.expect is None:
            raise BadInput(f"SUT {sut_name!r} has no default chains; give a runbook with an expect step")
        direct, relayed = sut.expect.direct, sut.expect.relayed
    public = dict(public or {})
    real = {node: value for node, value in public.items() if not is_placeholder(value)}
    sanitiser = Sanitiser.from_addresses(
        {node: NodeAddresses(node=node, lan_ip=None, public_ip=value) for node, value in real.items()},
        hash_peer_ids=hash_peer_ids,
    )
    logs: dict[str, NodeLog] = {}
    texts = {node: read_log(path) for node, path in files.items()}  # every file checked before any work
    conntrack_texts = {p: read_log(p) for p in conntrack_files}
    for node, text in texts.items():
        role = Role(node) if node in Role.__members__ else None
        log = NodeLog(node, f"logs/{node}.log", LAB_SUT if node == LAB else sut, role)
        log.append(sanitiser.lines(text.splitlines(), stream=node))
        logs[node] = log
    tables = {}
    for path, text in conntrack_texts.items():
        router = safe_name(sanitiser.line(path.stem))  # `ec2-54-1-2-3.conntrack` names a host
        tables[router] = (f"conntrack/{router}{path.suffix}", sanitiser.text(text))
    ground_truth = _ground_truth(public, tables, sanitiser, clock_skew) if tables else None
    direct_result = evaluate_chain(direct, logs, conntrack=ground_truth, clock_skew=clock_skew)
    relayed_result = evaluate_chain(relayed, logs, conntrack=ground_truth, clock_skew=clock_skew) if relayed else None
    # Time zero is the first checkpoint met, not the first line: a user's log may start days earlier.
    times = [hit.time for hit in direct_result.hits if hit.time is not None]
    verification = Verification(
        decide(direct_result, relayed_result), logs, dict(files), min(times) if times else None, tables=tables
    )
    verification.placeholders = sanitiser.placeholders()
    verification.sanitiser = sanitiser
    return verification


def _ground_truth(
    public: Mapping[str, str], tables: Mapping[str, tuple[str, str]], sanitiser: Sanitiser, skew: float
) -> GroundTruth:
    """Each node with a public address: behind NAT when a table is named after it (one hop, its WAN the public
    address), else without; the relay's address is excluded from direct flows."""
    sides: dict[str, Side] = {}
    excluded: set[str] = set()
    for node, value in public.items():
        shown = value if is_placeholder(value) else sanitiser.placeholder_for(value)
        if node == Role.relay.value:
            excluded.add(shown)
            continue
        router = next((stem for stem in (f"{node}-router", node) if stem in tables), None)
        sides[node] = Side(node, shown, (NatHop(router, shown),) if router else ())
    return GroundTruth(sides, tables, {}, frozenset(excluded), skew)


def read_log(path: Path) -> str:
    """A log's text; one BadInput line when it cannot be read or is not text (binary data)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise BadInput(f"{path}: cannot read: {error.strerror or error}") from None
    nul = raw.find(b"\0")
    if nul >= 0:
        raise BadInput(f"{path}: not a text log (a NUL byte at offset {nul}: binary data?)")
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
    if bad > max(16, MAX_UNDECODABLE * len(text)):
        raise BadInput(f"{path}: not a text log ({bad} bytes that are not UTF-8: binary data?)")
    return text


def safe_name(text: str) -> str:
    """A sanitised name usable as a file name: `<HOST_1>` becomes `HOST_1`."""
    return "".join(c for c in text if c not in "<>/\\") or "unnamed"


def write_verification_report(
    verification: Verification,
    out_dir: Path,
    *,
    sut_name: str,
    expect: ScenarioExpect | None = None,
    source: str = "",
    accept_log_only: bool = False,
) -> ScenarioResult:
    """Write sanitised logs and report.{json,md}, junit.xml into `out_dir`, as a lab run would."""
    from harness.report import write_scenario_report

    out_dir = Path(out_dir)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    for log in verification.logs.values():
        (out_dir / log.file).write_text("".join(line.text + "\n" for line in log.lines))
    tables = verification.tables or {}
    for file, text in tables.values():
        (out_dir / file).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / file).write_text(text)
    outcome = verification.outcome
    expect = expect or ScenarioExpect(verdict=ExpectedVerdict.direct)
    start = verification.start or 0.0
    if verification.sanitiser is not None and source:
        source = verification.sanitiser.line(source)
    result = ScenarioResult(
        runbook=f"verify ({sut_name})",
        scenario_id="verify",
        run_id=out_dir.name,
        backend="logs",
        report_dir=out_dir,
        expected=expect,
        verdict=outcome.verdict,
        as_expected=as_expected(outcome.verdict, outcome.first_missing, expect, accept_log_only=accept_log_only),
        first_missing=outcome.first_missing,
        description=f"Logs verified after the fact{': ' + source if source else ''}.",
        topology=Topology(
            nodes={
                node: Node(role=log.role or Role.client, sut=sut_name, nat_profile="none")
                for node, log in verification.logs.items()
                if log.role is not None
            }
        ),
        started_at=start,
    )
    result.checkpoints = records(outcome.direct, start)
    result.relayed_checkpoints = records(outcome.relayed, start) if outcome.relayed else []
    result.timings.update(phase_timings(outcome.direct, get_sut(sut_name).phases))
    result.environment = {"sut": sut_name, "source": source or "-"}
    if accept_log_only and outcome.verdict.value == "unverified":
        result.notes.append("accepted on log-only evidence (--accept-log-only): no router confirmed the direct path")
    result.placeholders = list(verification.placeholders or [])
    result.conntrack = [RouterTable(router=name, file=file, required=True) for name, (file, _t) in tables.items()]
    write_scenario_report(result, verification.logs)
    verification.result = result
    return result
