"""Find IPv4 and IPv6 addresses in every form a log spells them, in one linear pass each.

Every pattern here is bounded: a candidate is at most a few dozen characters and starts only where the
previous character cannot continue it, so a long line costs time proportional to its length, whatever it
holds. The parser (`ipaddress`, or a few integer checks) decides; the patterns only propose.

Forms: dotted quads (leading zeros too: `010.001.002.003` is 10.1.2.3), glued to letters (`addr10.0.0.10`,
`10.0.0.12ms`), IPv6 in brackets, with zones (`%eth0`, URL-encoded `%25eth0`), with a v4 tail (v4-mapped,
NAT64), right after a `word:` label (`addr:2001:db8::1`), unbracketed `v6:port`; Rust debug byte arrays
(`ip: [10, 0, 3, 61]`, `IpAddress([..16 bytes..])`, `segments: [..8..]`); tcpdump's `10.0.0.1.4001 >`; host
names that spell an address (`ec2-54-210-1-2.compute-1.amazonaws.com`, `static.24.113.0.203.clients.x.de`).

A dotted quad stays when the text in front of it says it is a version (`kaspad 0.12.17.1`, `v1.2.3.4`,
`"version":"1.2.3.4"`, `kaspad/1.2.3.4`, `/kaspad:1.2.3.4/`), unless it is plainly an address: followed by a
port or a multiaddr part, or one the run already knows.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

# -- IPv4 ------------------------------------------------------------------------------------------------

# Four numbers, not followed by a digit or `.digit`; `v4_left_ok` checks what precedes (no digit, no
# `digit.`), so `1.10.0.0.1` and `11.2.3.4.5` are no quads. (A look-behind in front would slow the scan.)
V4 = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9]|\.[0-9])")
# Every quad has `.n.n.` in its middle: a literal-first test that skips lines without one.
V4_HINT = re.compile(r"\.[0-9]{1,3}\.[0-9]")
# tcpdump prints `IP 10.0.0.1.4001 > 10.0.0.2.22: Flags [S]`: an address, a dot and a port.
TCPDUMP = re.compile(r"((?:[0-9]{1,3}\.){3}[0-9]{1,3})\.([0-9]{1,5})(?=(?: >|:) )")
# The names before a version number; `ip4/...`-like multiaddr parts are none.
_VERSION_WORDS = (
    "version", "ver", "release", "build", "revision", "rev", "agent", "kaspad", "rusty-kaspa", "kaspa", "kaspa-ng",
    "libp2p", "rust-libp2p", "go-libp2p", "openssh", "openssl", "linux", "kernel", "firmware",
)  # fmt: skip
_NOT_PRODUCTS = frozenset({"ip", "ip4", "ip6", "ipv4", "ipv6", "dns", "dns4", "dns6", "dnsaddr", "addr", "tcp", "udp"})
_PRODUCT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_PRODUCT_LEFT = frozenset(" \t\"'([=,;{")
_ADDRESS_AFTER = re.compile(r"(?::[0-9]|/(?:tcp|udp|p2p|quic|[0-9]))")


def v4_left_ok(text: str, start: int) -> bool:
    if start == 0:
        return True
    before = text[start - 1]
    if before.isdigit():
        return False
    return not (before == "." and start > 1 and text[start - 2].isdigit())


def v4_octets(token: str) -> tuple[int, int, int, int] | None:
    parts = token.split(".")
    if len(parts) != 4:
        return None
    values = tuple(int(p) for p in parts)
    if any(v > 255 for v in values):
        return None
    return values  # type: ignore[return-value]


def v4_canonical(token: str) -> str | None:
    octets = v4_octets(token)
    return None if octets is None else "{}.{}.{}.{}".format(*octets)


def v4_kept(canonical: str) -> bool:
    """Loopback and unspecified name no machine: `127.0.0.1`, `0.0.0.0` read better as they are."""
    return canonical.startswith("127.") or canonical == "0.0.0.0"


def version_context(text: str, start: int, end: int) -> bool:
    """True when the quad at text[start:end] reads as a version number and nothing says it is an address:
    `v1.2.3.4`, `kaspad/1.2.3.4`, `/kaspad:1.2.3.4/`, `kaspad 0.12.17.1`, `"version":"1.2.3.4"`."""
    if _ADDRESS_AFTER.match(text, end) or start == 0:
        return False
    before = text[start - 1]
    if before in "vV":
        return start < 2 or not text[start - 2].isalpha()
    if before in "/:":
        name_end = start - 1
        name_start = name_end
        while name_start > 0 and name_end - name_start < 40 and text[name_start - 1] in _PRODUCT_CHARS:
            name_start -= 1
        name = text[name_start:name_end]
        if name and name[0].isalpha() and name.lower() not in _NOT_PRODUCTS:
            left = text[name_start - 1] if name_start > 0 else " "
            if before == "/" and left in _PRODUCT_LEFT:
                return True  # `kaspad/1.2.3.4`
            if before == ":" and left == "/":
                return True  # `/kaspad:1.2.3.4/`
    # `version 1.2.3.4`, `"version": "1.2.3.4"`, `app_version=1.2.3.4`, `kaspad 0.12.17.1`
    cut = start
    while cut > 0 and start - cut < 8 and text[cut - 1] in " \t\"':=":
        cut -= 1
    if cut == start:
        return False
    head = text[max(0, cut - 16) : cut].lower()
    for word in _VERSION_WORDS:
        if head.endswith(word):
            word_start = cut - len(word)
            return word_start == 0 or not text[word_start - 1].isalpha()
    return False


# -- IPv6 ------------------------------------------------------------------------------------------------

# A candidate is found from two colons with at most four hex digits between them (`V6_HINT`, which starts
# with a literal and so scans fast), widened left over hex digits and colons, then read by `V6_RUN`: a run of
# hex digits and colons, an optional v4 tail and an optional zone (`%eth0`, URL-encoded `%25eth0`).
V6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")
V6_RUN = re.compile(
    r"[0-9A-Fa-f:]{2,64}(?:(?<=[0-9])(?:\.[0-9]{1,3}){3})?"
    r"(?:%25[0-9A-Za-z_.\-]{1,32}|%(?!2[Ff]|3[Aa])[0-9A-Za-z_.\-]{1,32})?"
)
_HEX_COLON = frozenset("0123456789abcdefABCDEF:")


def v6_candidates(text: str) -> list[tuple[int, int]]:
    """(start, end) of every IPv6 candidate of `text`, left to right, not overlapping."""
    found: list[tuple[int, int]] = []
    last = 0
    for hint in V6_HINT.finditer(text):
        if hint.start() < last:
            continue
        start = hint.start()
        while start > 0 and hint.start() - start < 64 and text[start - 1] in _HEX_COLON:
            start -= 1
        run = V6_RUN.match(text, start)
        if run is None:
            continue
        end = run.end()
        last = max(end, hint.end())
        if (end < len(text) and text[end] in _HEX_COLON) or (start > 0 and text[start - 1] in _HEX_COLON):
            continue  # longer than any address: a hex dump, not an address
        found.append((start, end))
    return found


_PORT_TAIL = re.compile(r":[0-9]{1,5}$")


def v6_parse(core: str) -> ipaddress.IPv6Address | None:
    # Cheap shape checks first: a timestamp (`15:23:11`) or a MAC address is no address, and the parser is slow
    # to say so.
    if "::" not in core and core.count(":") != 7 and not (core.count(":") == 6 and "." in core):
        return None
    try:
        return ipaddress.IPv6Address(core)
    except ValueError:
        return None


def v6_resolve(candidate: str) -> str | None:
    """The canonical form of an IPv6 candidate (v4-mapped as v4); "" for a kept one; None for no address."""
    ip = v6_parse(candidate)
    if ip is None:
        return None
    return "" if v6_kept(ip) else v6_canonical(ip)


def v6_kept(ip: ipaddress.IPv6Address) -> bool:
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return v4_kept(str(mapped))
    return ip.is_loopback or ip.is_unspecified


def v6_canonical(ip: ipaddress.IPv6Address) -> str:
    mapped = ip.ipv4_mapped
    return str(mapped) if mapped is not None else str(ip)


def _word(char: str) -> bool:
    return char.isalnum() or char == "_"


def v6_split(
    text: str, start: int, end: int, resolve: Callable[[str], str | None], known: Callable[[str], bool]
) -> tuple[int, int, str] | None:
    """Where the address of a candidate text[start:end] is (start, end) and what it is; None when it is none.

    - `addr:2001:db8::1`, `id:2001:db8::1`: a word glued on the left is a label ending at the first colon;
    - `libp2p_core::transport`: a Rust path (glued on both sides, two colons) is no address;
    - `2001:db8::1:4001`: a trailing `:port` is dropped when the rest is an address the run knows, or when the
      whole is none.

    `resolve` turns a candidate into its canonical form (None: no address); the third item returned is that.
    """
    token = text[start:end]
    if "::" not in token and token.count(":") < 6:
        return None  # a timestamp (`15:23:11`), a MAC address: quick, before any parsing
    zone_at = token.find("%")
    core = token if zone_at < 0 else token[:zone_at]
    glued_left = start > 0 and _word(text[start - 1])
    glued_right = end < len(text) and _word(text[end])
    offset = 0
    if core.startswith(":::"):
        offset = 1  # `addr:::1`: a label's colon, then `::1`
    elif glued_left or (core.startswith(":") and not core.startswith("::")):
        first = core.find(":")
        if 0 <= first <= 2 and (core[first + 1 : first + 2] != ":" or core[first + 1 : first + 3] == "::"):
            offset = first + 1  # `id:2001:db8::1`, `id:::1`
        elif glued_left and core[first + 1 : first + 2] == ":":
            return None  # `core::transport`, `dcutr::Behaviour`
    core = core[offset:]
    if glued_right and core.count(":") <= 2:
        return None
    candidates = [core]
    tail = _PORT_TAIL.search(core)
    if tail:
        stripped = core[: tail.start()]
        canonical = resolve(stripped)
        if canonical is not None and known(canonical):
            return start + offset, start + offset + len(stripped), canonical
        candidates.append(stripped)
    for index, candidate in enumerate(candidates):
        canonical = resolve(candidate)
        if canonical is not None:
            stop = start + offset + len(candidate)
            if index == 0 and zone_at >= 0:
                stop = end  # the zone goes with the address
            return start + offset, stop, canonical
    return None


# -- Rust debug forms ------------------------------------------------------------------------------------

# `ip: [10, 0, 3, 61]`, `IpAddress([203, 0, 113, 9])`, 16-byte arrays; `segments: [8193, 3512, 0, ...]`:
# found from the `[`, then the label in front of it is checked (`array_label`).
ARRAY = re.compile(
    r"\[\s{0,3}(?P<items>[0-9]{1,5}(?:\s{0,3},\s{0,3}[0-9]{1,5}){3}(?:(?:\s{0,3},\s{0,3}[0-9]{1,5}){4}){0,3})\s{0,3}\]"
)
_ARRAY_LABEL = re.compile(
    r"(?i)(?:^|[^A-Za-z0-9_])(?P<label>ip|ips|addr|address|ip_?addr(?:ess)?|octets|ipaddress|ipv4addr|ipv6addr|v4|v6"
    r"|net_?address|socket_?addr|peer_?addr|remote_?addr|local_?addr|segments)\s{0,3}[:=(]?\s{0,3}\(?\s{0,3}$"
)


def array_address(match: re.Match[str]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a Rust byte (or segment) array spells, when a label in front says it is one."""
    label = _ARRAY_LABEL.search(match.string, max(0, match.start() - 24), match.start())
    if label is None:
        return None
    values = [int(v) for v in match.group("items").split(",")]
    if label.group("label").lower() == "segments":
        if len(values) != 8 or any(v > 0xFFFF for v in values):
            return None
        return ipaddress.IPv6Address(b"".join(v.to_bytes(2, "big") for v in values))
    if len(values) not in (4, 16) or any(v > 255 for v in values):
        return None
    return ipaddress.ip_address(bytes(values))


# -- addresses spelt in host names ---------------------------------------------------------------------

# `ip-172-31-5-9`, `ec2-54-210-1-2`, `10-0-0-22.nip.io`: four dash-separated octets (found from `-n-n-`).
DASH_HINT = re.compile(r"-[0-9]{1,3}-[0-9]{1,3}-")
DASH_QUAD = re.compile(r"[0-9]{1,3}-[0-9]{1,3}-[0-9]{1,3}-[0-9]{1,3}(?![0-9]|-[0-9])")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


def dash_left_ok(text: str, start: int) -> bool:
    """Not in the middle of a longer dash-separated number (`2026-02-22-10-15`); `ec2-54-...` is fine: the
    digit before the dash belongs to a label with letters."""
    if start == 0:
        return True
    before = text[start - 1]
    if before.isdigit():
        return False
    if before != "-":
        return True
    left = start - 1
    while left > 0 and text[left - 1].isdigit():
        left -= 1
    if left == start - 1:
        return True  # `ip-10-...`: no number before the dash
    return left > 0 and text[left - 1].isalpha()


def in_host_name(text: str, start: int, end: int) -> bool:
    """A dotted quad with a host name's labels around it: `static.24.113.0.203.clients.example.de`,
    `7.113.0.203.in-addr.arpa`, `10.0.0.1.nip.io`."""
    if end + 1 < len(text) and text[end] == "." and text[end + 1].isalpha():
        return True
    return start > 1 and text[start - 1] == "." and (text[start - 2].isalpha() or text[start - 2] == "-")


def host_token(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen text[start:end] to the host name around it (letters, digits, dots and dashes; at most 253)."""
    left = start
    while left > 0 and start - left < 253 and text[left - 1] in _HOST_CHARS:
        left -= 1
    right = end
    while right < len(text) and right - end < 253 and text[right] in _HOST_CHARS:
        right += 1
    while right > end and text[right - 1] in ".-":
        right -= 1
    while left < start and text[left] in ".-":
        left += 1
    return left, right


def embedded_quad(token: str) -> bool:
    """The four numbers of a DASH_QUAD or dotted match are octets."""
    parts = token.replace("-", ".").split(".")
    return len(parts) == 4 and all(int(p) <= 255 for p in parts)
