"""The delaying wire's scheduling, without sockets or a clock: delay, order, jitter, loss, and the lab's knobs."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import random
import struct
from pathlib import Path

import pytest

from harness.errors import BadInput

WIRE = Path(__file__).resolve().parent.parent / "images" / "router" / "dcutr-wire"


def _wire():
    loader = importlib.machinery.SourceFileLoader("dcutr_wire", str(WIRE))
    spec = importlib.util.spec_from_loader("dcutr_wire", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _arp(n: int) -> bytes:
    return b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + struct.pack("!H", n) + b"\x00" * 26


def test_a_frame_leaves_after_the_delay_and_not_before():
    link = _wire().Link(0.020)
    assert link.push(_arp(1), now=100.0)
    assert link.next_due() == pytest.approx(100.020)
    assert link.due(100.019) == []
    assert link.due(100.020) == [_arp(1)]
    assert link.next_due() is None and link.due(200.0) == []


def test_frames_keep_their_order_and_spacing():
    link = _wire().Link(0.050)
    for n, at in enumerate((1.000, 1.001, 1.030)):
        link.push(_arp(n), now=at)
    assert link.due(1.0505) == [_arp(0)]
    assert link.due(1.0515) == [_arp(1)]
    assert link.due(1.0795) == []
    assert link.due(1.080) == [_arp(2)]


def test_jitter_adds_delay_within_bounds_and_never_reorders():
    wire = _wire()
    link = wire.Link(0.010, jitter=0.030, rng=random.Random(4))
    for n in range(500):
        link.push(_arp(n), now=n * 0.001)
    times = [at for at, _ in link.queue]
    assert times == sorted(times)  # FIFO: a frame never overtakes the one before it
    assert all(0.010 <= at - n * 0.001 <= 0.040 + 1e-9 for n, at in enumerate(times))
    assert len({round(at - n * 0.001, 6) for n, at in enumerate(times)}) > 100  # the delay does vary
    assert link.due(10.0) == [_arp(n) for n in range(500)]


def test_loss_drops_about_that_share_each_way():
    link = _wire().Link(0.0, loss=0.25, rng=random.Random(7))
    kept = sum(link.push(_arp(n % 60000), now=0.0) for n in range(4000))
    assert link.received == 4000 and link.lost == 4000 - kept
    assert 0.22 < link.lost / 4000 < 0.28
    assert len(link.due(0.0)) == kept


def test_no_loss_loses_nothing():
    link = _wire().Link(0.001)
    assert all(link.push(_arp(n), now=0.0) for n in range(1000))
    assert link.lost == 0 and len(link.due(1.0)) == 1000


@pytest.mark.parametrize(
    ("delay", "jitter", "loss"), [(-0.001, 0, 0), (0.01, -1, 0), (0.01, 0, 1.0), (0, 0, -0.1), (float("nan"), 0, 0)]
)
def test_nonsense_links_are_refused(delay, jitter, loss):
    with pytest.raises(ValueError):
        _wire().Link(delay, jitter, loss)


def test_the_wire_sleeps_until_the_next_frame_is_due():
    wire = _wire()
    idle, busy = wire.Link(0.020), wire.Link(0.020)
    assert wire.poll_timeout_ms([idle, busy], now=5.0) == 1000.0
    busy.push(_arp(1), now=5.0)
    assert wire.poll_timeout_ms([idle, busy], now=5.005) == pytest.approx(15.0)
    assert wire.poll_timeout_ms([idle, busy], now=6.0) == 0.0  # overdue: no sleep at all


def test_oversized_frames_are_segmented_on_the_way_in():
    wire = _wire()
    payload = bytes(range(256)) * 40  # 10 KiB, one TCP super-frame
    tcp = struct.pack("!HHIIBBHHH", 4012, 4013, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, b"\xc6\x12\0\x0a", b"\xc6\x12\0\x0b")
    link = wire.Link(0.0)
    link.push(b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp, now=0.0)
    frames = link.due(0.0)
    assert len(frames) == 8 and all(len(f) <= 1514 for f in frames)
    assert b"".join(f[54:] for f in frames) == payload


def test_the_wire_refuses_bad_arguments(capsys):
    wire = _wire()
    with pytest.raises(SystemExit) as caught:
        wire.main(["--a", "eth0", "--b", "eth0", "--delay-ms", "5"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        wire.main(["--a", "eth0", "--b", "w0", "--delay-ms", "5", "--loss", "100"])
    assert caught.value.code == 2
    assert "bad link" in capsys.readouterr().err


def test_the_wire_gives_up_on_a_port_that_never_comes_up():
    with pytest.raises(SystemExit, match=r"no interface no-such-port0 up after 0\.1s"):
        _wire().wait_for_interfaces(["no-such-port0"], 0.1)


def test_the_runs_wan_delay_comes_from_the_environment(monkeypatch):
    from harness.backends import docker as backend

    monkeypatch.delenv(backend.WAN_DELAY_ENV, raising=False)
    assert backend.default_wan_delay_ms() == backend.DEFAULT_WAN_DELAY_MS == 20.0
    monkeypatch.setenv(backend.WAN_DELAY_ENV, "0")
    assert backend.default_wan_delay_ms() == 0.0
    monkeypatch.setenv(backend.WAN_DELAY_ENV, " 12.5 ")
    assert backend.default_wan_delay_ms() == 12.5
    for bad in ("fast", "-5", "nan", "1e9"):
        monkeypatch.setenv(backend.WAN_DELAY_ENV, bad)
        with pytest.raises(BadInput, match="DCUTR_LAB_WAN_DELAY_MS"):
            backend.default_wan_delay_ms()


def test_punch_results_record_the_link():
    from harness.nat.punch import Expectation, PunchResult, PunchSide, punch_table

    side = PunchSide(profile="openwrt-fw4", outcome="connected")
    result = PunchResult(a=side, b=side, trial=1, skew_s=0.0, expected=Expectation.racy, delay_ms=20.0)
    assert result.model_dump(mode="json")["delay_ms"] == 20.0
    assert "WAN delay 20 ms" in str(punch_table([result]).title)
    old = PunchResult.model_validate({k: v for k, v in result.model_dump().items() if k not in ("delay_ms", "loss")})
    assert old.delay_ms == 0.0  # results written before the wire still load


class _FakeLab:
    run_id = "fake"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@pytest.mark.parametrize(
    ("argv", "env", "expected"), [([], None, 20.0), (["--delay-ms", "0"], "7", 0.0), ([], "7", 7.0)]
)
def test_nat_punch_passes_the_wan_delay_to_the_lab(monkeypatch, capsys, argv, env, expected):
    from harness.backends import docker as backend
    from harness.cli import main
    from harness.nat import punch

    seen = {}

    def fake_punch_pairs(pairs, **kwargs):
        seen.update(kwargs, pairs=pairs)
        return []

    monkeypatch.setattr(backend, "DockerLab", _FakeLab)
    monkeypatch.setattr(punch, "punch_pairs", fake_punch_pairs)
    if env is None:
        monkeypatch.delenv(backend.WAN_DELAY_ENV, raising=False)
    else:
        monkeypatch.setenv(backend.WAN_DELAY_ENV, env)
    assert main(["nat", "punch", "openwrt-fw4", *argv]) == 0
    assert seen["wan_delay_ms"] == expected and seen["wan_loss"] == 0.0
    assert seen["pairs"] == [("openwrt-fw4", "openwrt-fw4")]
    assert f"WAN delay {expected:g} ms" in capsys.readouterr().out


def test_nat_punch_refuses_a_negative_delay(capsys):
    from harness.cli import main

    assert main(["nat", "punch", "openwrt-fw4", "--delay-ms", "-1"]) == 2
