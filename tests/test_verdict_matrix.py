from __future__ import annotations

import pytest

from harness.checkpoints import ChainResult, Hit, Miss
from harness.matrix import grid, wilson
from harness.models import ExpectedVerdict, ScenarioExpect, Verdict
from harness.runbook import load_runbook
from harness.verdict import Label, as_expected, decide, first_missing_matches, label
from tests.test_runbook_models import RUNBOOKS


def _chain(*names: str, missing: str | None = None) -> ChainResult:
    items: list = [Hit(n, n.split(".")[0], n.split(".")[1], {}, [], 1, None) for n in names]
    if missing:
        items.append(Miss(missing, "no line"))
    return ChainResult(items=items, namespace={})


def test_decide():
    assert decide(_chain("a.x"), None).verdict == Verdict.direct
    relayed = decide(_chain("a.x", missing="client.dcutr_direct"), _chain("a.x", "client.handshake_relayed"))
    assert relayed.verdict == Verdict.relayed and relayed.first_missing.name == "client.dcutr_direct"
    failed = decide(_chain(missing="relay.listening"), _chain(missing="relay.listening"))
    assert failed.verdict == Verdict.fail and failed.first_missing.name == "relay.listening"


def test_as_expected_with_first_missing():
    expect = ScenarioExpect(verdict=ExpectedVerdict.fail, first_missing="dcutr_direct")
    assert as_expected(Verdict.fail, Miss("client.dcutr_direct", ""), expect)
    assert not as_expected(Verdict.fail, Miss("server.reservation_accepted", ""), expect)
    assert not as_expected(Verdict.relayed, Miss("client.dcutr_direct", ""), expect)
    rate = ScenarioExpect(verdict=ExpectedVerdict.rate, direct_rate={"min": 0.6})
    assert as_expected(Verdict.direct, None, rate) and as_expected(Verdict.relayed, None, rate)
    assert not as_expected(Verdict.fail, None, rate) and not as_expected(Verdict.unverified, None, rate)
    assert first_missing_matches(Miss("client.dcutr_direct | server.dcutr_direct", ""), "server.dcutr_direct")


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        ([True], Label.PASS),
        ([False, True], Label.PASS_FLAKY),
        ([False, False, True], Label.PASS_FLAKY),
        ([False, False, False, True], Label.FAIL),
        ([False], Label.FAIL),
        ([], Label.FAIL),
    ],
)
def test_labels(attempts, expected):
    assert label(attempts) == expected


def test_wilson_interval():
    assert wilson(0, 0).trials == 0
    full = wilson(10, 10)
    assert full.high == 1.0 and 0.69 < full.low < 0.73
    none = wilson(0, 10)
    assert none.low == 0.0 and 0.27 < none.high < 0.31
    half = wilson(5, 10)
    assert half.low < 0.5 < half.high and str(half).startswith("5/10 (50%")
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_matrix_grid_compares_expected_and_measured():
    runbook = load_runbook(RUNBOOKS / "matrix.yaml")
    rows = grid(runbook, {"matrix_none_x_none": ["direct"], "matrix_symmetric_x_symmetric": ["direct", "relayed"]})
    assert len(rows) == 8 and all(len(r) == 8 for r in rows)  # with cgnat as a row and a column
    cells = {c.scenario_id: c for row in rows for c in row}
    assert cells["matrix_none_x_none"].as_expected is True
    mixed = cells["matrix_symmetric_x_symmetric"]
    assert mixed.measured == "mixed" and mixed.as_expected is False and mixed.rate.trials == 2
    assert cells["matrix_full_cone_x_full_cone"].measured is None


def test_a_rate_band_fails_only_when_the_interval_excludes_it():
    from harness.matrix import cell_ok

    band = ScenarioExpect(verdict=ExpectedVerdict.rate, direct_rate={"min": 0.6})
    assert cell_ok(band, ["direct"] * 7 + ["relayed"] * 3)  # 70%: inside
    assert cell_ok(band, ["direct"] * 4 + ["relayed"] * 6)  # 40%, interval 17%-69%: cannot exclude 60%
    assert not cell_ok(band, ["direct"] * 1 + ["relayed"] * 9)  # 10%, interval 2%-40%: excluded
    assert not cell_ok(band, ["direct"] * 9 + ["fail"])  # a broken lab is no measurement
    ceiling = ScenarioExpect(verdict=ExpectedVerdict.rate, direct_rate={"max": 0.3})
    assert not cell_ok(ceiling, ["direct"] * 9 + ["relayed"])
