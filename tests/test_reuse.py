"""Attempts on one reused topology (harness.runbook.repeat with a backend that can reset): the engine's side.

The Docker backend's own isolation between attempts is proven on Docker (e2e/test_reuse.py); here a fake that
can reset shows who provisions, resets and closes what, and that a failed reset costs one fresh lab, not a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from harness.backends.base import reusable
from harness.errors import BadInput, SetupError
from harness.models import Topology, Verdict
from harness.runbook import load_runbook, run_repeated, run_scenario
from tests.fakes import FakeBackend, FakeClock, lab
from tests.test_runbook_models import PHASE4


@dataclass
class ResettableFake(FakeBackend):
    resets: list[Topology] = field(default_factory=list)
    fail_reset: bool = False

    def reset(self, topology: Topology) -> None:
        if self.provisioned != topology:
            raise BadInput("another topology")
        if self.fail_reset:
            raise SetupError("the lab would not reset")
        self.resets.append(topology)
        self.clock.now = 0.0  # the fake's canned logs and conntrack events are times after a lab's start
        self.starts.clear()  # a new attempt: no process of the last one
        self.stopped.clear()
        self._past.clear()


@pytest.fixture
def phase4():
    return load_runbook(PHASE4)


def _resettable(clock: FakeClock, *, fail_reset: bool = False) -> ResettableFake:
    template = lab()
    backend = ResettableFake(
        clock=clock, scripts=template.scripts, exits=template.exits, conntrack=template.conntrack, fail_reset=fail_reset
    )
    return backend


def test_n_attempts_share_one_backend_reset_between_them(phase4, tmp_path):
    clock = FakeClock()
    made: list[ResettableFake] = []

    def make(attempt: int) -> ResettableFake:
        made.append(_resettable(clock))
        return made[-1]

    repeat = run_repeated(phase4, "mixed_nat", make, tmp_path, attempts=3, clock=clock, poll_interval=0.2)
    assert [a.verdict for a in repeat.attempts] == [Verdict.direct] * 3
    assert len(made) == 1 and len(made[0].resets) == 2 and made[0].closed
    assert [a.attempt for a in repeat.attempts] == [1, 2, 3]
    assert all((tmp_path / f"attempt-{n}" / "report.md").is_file() for n in (1, 2, 3))


def test_the_retry_policy_keeps_a_new_lab_per_attempt(phase4, tmp_path):
    clock = FakeClock()
    made: list[ResettableFake] = []

    def make(attempt: int) -> ResettableFake:
        backend = _resettable(clock)
        if attempt == 1:
            backend.exits = {"client": (1.0, 1)}  # attempt 1 breaks: the retry gets its own lab
        made.append(backend)
        return backend

    repeat = run_repeated(phase4, "mixed_nat", make, tmp_path, clock=clock, poll_interval=0.2)
    assert repeat.label == "PASS-FLAKY" and len(made) == 2 and all(b.closed and not b.resets for b in made)


def test_a_failed_reset_gives_that_attempt_a_fresh_backend(phase4, tmp_path):
    clock = FakeClock()
    made: list[ResettableFake] = []

    def make(attempt: int) -> ResettableFake:
        clock.now = 0.0  # a new lab's canned times start again
        made.append(_resettable(clock, fail_reset=attempt == 1))
        return made[-1]

    repeat = run_repeated(phase4, "mixed_nat", make, tmp_path, attempts=3, clock=clock, poll_interval=0.2)
    assert [a.verdict for a in repeat.attempts] == [Verdict.direct] * 3
    assert len(made) == 2 and all(b.closed for b in made)
    assert len(made[1].resets) == 1  # attempt 2 provisioned the new backend, attempt 3 reset it


def test_reuse_false_and_backends_without_reset_get_a_lab_per_attempt(phase4, tmp_path):
    clock = FakeClock()
    made: list[FakeBackend] = []

    def make(attempt: int) -> FakeBackend:
        backend = lab()
        backend.clock = clock
        made.append(backend)
        return backend

    assert not reusable(lab()) and reusable(_resettable(clock))
    run_repeated(phase4, "mixed_nat", make, tmp_path, attempts=2, clock=clock, poll_interval=0.2)
    assert len(made) == 2 and all(b.closed for b in made)
    fresh: list[ResettableFake] = []
    run_repeated(
        phase4, "mixed_nat", lambda n: fresh.append(_resettable(clock)) or fresh[-1], tmp_path / "f", attempts=2,
        clock=clock, poll_interval=0.2, reuse=False,
    )  # fmt: skip
    assert len(fresh) == 2 and not any(b.resets for b in fresh)


def test_a_reused_attempt_times_its_reset_as_setup(phase4, tmp_path):
    clock = FakeClock()
    backend = _resettable(clock)
    first = run_scenario(phase4, "mixed_nat", backend, tmp_path / "1", clock=clock, poll_interval=0.2)
    second = run_scenario(phase4, "mixed_nat", backend, tmp_path / "2", clock=clock, poll_interval=0.2, reuse=True)
    assert first.verdict == second.verdict == Verdict.direct
    assert len(backend.resets) == 1 and "setup" in second.timings


def test_the_poll_interval_comes_from_the_runbook(tmp_path):
    import yaml

    data = yaml.safe_load(PHASE4.read_text())
    data["poll"] = "100ms"
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(data))
    runbook = load_runbook(path)
    assert runbook.poll == pytest.approx(0.1)
    assert load_runbook(PHASE4).poll > 0
    clock = FakeClock()
    slept: list[float] = []
    backend = _resettable(clock)
    original = clock.sleep

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        original(seconds)

    clock.sleep = sleep
    run_scenario(runbook, "mixed_nat", backend, tmp_path / "run", clock=clock)
    assert slept and all(seconds == pytest.approx(0.1) for seconds in slept)
