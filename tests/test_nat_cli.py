"""`dcutr-lab nat ...` and `dcutr-lab images ...` commands that need no Docker."""

from __future__ import annotations

import pytest

from harness.cli import main


def test_nat_list_shows_every_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nat", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("none", "full-cone", "symmetric", "openwrt-fw4-fullcone", "cgnat"):
        assert name in out


def test_nat_show_prints_the_ruleset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nat", "show", "symmetric", "--wan-if", "wan9", "--wan-ip", "198.18.7.7"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flush ruleset\n")
    assert 'oifname "wan9" masquerade random,fully-random' in out


def test_nat_show_a_chain_prints_each_hop(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nat", "show", "cgnat"]) == 0
    out = capsys.readouterr().out
    assert "# hop port-restricted" in out and "# hop cgnat-carrier" in out
    assert out.count("flush ruleset") == 2


def test_unknown_profile_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nat", "show", "fullcone"]) == 2
    assert "unknown NAT profile 'fullcone'" in capsys.readouterr().err
    assert main(["nat", "probe", "fullcone"]) == 2  # refused before any lab exists


def test_unknown_image_kind_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["images", "build", "probe"]) == 2
    assert "unknown image kind 'probe'" in capsys.readouterr().err
