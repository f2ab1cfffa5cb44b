"""The outcome of one run, from two chain evaluations, and the label of a run repeated with retries.

- `direct`: every checkpoint of the direct chain met (DESIGN "What the lab proves" 1-7, ground truth included);
- `unverified`: the direct chain holds as far as the logs go, but its ground truth could not be checked (no
  router tables, addresses the lab does not know): never reported as direct;
- `relayed`: the direct chain broke, the relayed chain (1-4 and a handshake over the relay) holds;
- `fail`: anything else.
Each carries the first checkpoint the direct chain missed, with its reason and evidence.

Repeats follow the real lab runbook's bounded retry policy: `PASS` (first attempt as expected), `PASS-FLAKY`
(as expected on attempt 2 or 3), `FAIL` (not within 3 attempts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from harness.checkpoints import ChainResult, Miss
from harness.models import ExpectedVerdict, ScenarioExpect, Verdict

MAX_ATTEMPTS = 3


class Label(StrEnum):
    PASS = "PASS"
    PASS_FLAKY = "PASS-FLAKY"
    FAIL = "FAIL"


@dataclass
class Outcome:
    verdict: Verdict
    direct: ChainResult
    relayed: ChainResult | None
    first_missing: Miss | None

    @property
    def chain(self) -> ChainResult:
        """The chain whose checkpoints tell this outcome's story."""
        if self.verdict == Verdict.relayed and self.relayed is not None:
            return self.relayed
        return self.direct


def decide(direct: ChainResult, relayed: ChainResult | None) -> Outcome:
    if direct.complete and direct.unverified:
        return Outcome(Verdict.unverified, direct, relayed, None)
    if direct.complete:
        return Outcome(Verdict.direct, direct, relayed, None)
    if relayed is not None and relayed.items and relayed.complete:
        return Outcome(Verdict.relayed, direct, relayed, direct.first_missing)
    return Outcome(Verdict.fail, direct, relayed, direct.first_missing)


def first_missing_matches(missing: Miss | None, wanted: str) -> bool:
    """`dcutr_direct` matches a miss of `client.dcutr_direct`; a full `node.name` must match exactly."""
    if missing is None:
        return False
    names = [part.strip() for part in missing.name.split("|")]
    if "." in wanted:
        return wanted in names
    return any(name.split(".", 1)[-1] == wanted for name in names)


def as_expected(
    verdict: Verdict, missing: Miss | None, expect: ScenarioExpect, *, accept_log_only: bool = False
) -> bool:
    """`accept_log_only` (verify's explicit flag) lets an `unverified` verdict meet an expected `direct`."""
    if accept_log_only and verdict == Verdict.unverified and expect.verdict == ExpectedVerdict.direct:
        return True
    if expect.verdict == ExpectedVerdict.rate:
        return verdict in (Verdict.direct, Verdict.relayed)
    if verdict.value != expect.verdict.value:
        return False
    if expect.verdict == ExpectedVerdict.fail and expect.first_missing:
        return first_missing_matches(missing, expect.first_missing)
    return True


def label(attempts: Sequence[bool], max_attempts: int = MAX_ATTEMPTS) -> Label:
    """Attempts in order, True where the verdict was as expected; only the first `max_attempts` count."""
    counted = list(attempts)[:max_attempts]
    if counted and counted[0]:
        return Label.PASS
    if any(counted[1:]):
        return Label.PASS_FLAKY
    return Label.FAIL
