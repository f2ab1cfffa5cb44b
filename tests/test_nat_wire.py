"""The delaying wire's checksum repair, without Docker: frames leave it with valid TCP/UDP checksums."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import struct
from pathlib import Path

WIRE = Path(__file__).resolve().parent.parent / "images" / "router" / "dcutr-wire"


def _wire():
    loader = importlib.machinery.SourceFileLoader("dcutr_wire", str(WIRE))
    spec = importlib.util.spec_from_loader("dcutr_wire", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _frame(protocol: int, payload: bytes, checksum: int) -> bytes:
    src, dst = bytes([198, 18, 0, 10]), bytes([198, 18, 0, 11])
    if protocol == 6:
        segment = struct.pack("!HHIIBBHHH", 4012, 4013, 1, 0, 5 << 4, 0x02, 65535, checksum, 0) + payload
    else:
        segment = struct.pack("!HHHH", 4012, 4013, 8 + len(payload), checksum) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 1, 0, 64, protocol, 0, src, dst)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + segment


def _valid(frame: bytes) -> bool:
    wire = _wire()
    segment = frame[34:]
    pseudo = frame[26:34] + struct.pack("!BBH", 0, frame[23], len(segment))
    return wire._sum16(pseudo + segment) == 0xFFFF


def test_partial_checksums_are_completed_for_tcp_and_udp():
    wire = _wire()
    for protocol in (6, 17):
        broken = _frame(protocol, b"kaspa handshake", checksum=0x1234)
        assert not _valid(broken)
        fixed = wire.fix_checksum(broken)
        assert _valid(fixed)
        assert len(fixed) == len(broken)
        assert wire.fix_checksum(fixed) == fixed  # a correct sum stays as it is


def test_other_frames_pass_unchanged():
    wire = _wire()
    arp = b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\x00" * 28
    assert wire.fix_checksum(arp) == arp
    icmp = bytearray(_frame(6, b"x", 0))
    icmp[23] = 1
    assert wire.fix_checksum(bytes(icmp)) == bytes(icmp)


def test_oversized_tcp_frames_are_cut_into_mtu_sized_segments():
    wire = _wire()
    payload = bytes(range(256)) * 16  # 4096 bytes, as a GSO super-frame would carry
    frame = _frame(6, payload, checksum=0)
    pieces = wire.segment(frame, mtu=1500)
    assert len(pieces) == 3
    assert all(len(p) - 14 <= 1500 for p in pieces)
    assert all(_valid(p) for p in pieces)
    assert b"".join(p[14 + 20 + 20 :] for p in pieces) == payload
    seqs = [int.from_bytes(p[14 + 20 + 4 : 14 + 20 + 8], "big") for p in pieces]
    assert seqs == [1, 1 + 1460, 1 + 2920]
    small = _frame(6, b"hello", checksum=0)
    assert wire.segment(small) == [small]
