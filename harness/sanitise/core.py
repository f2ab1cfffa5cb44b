"""The `Sanitiser`: one per run, the same real value always gets the same placeholder."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from harness.sanitise import addresses as addr
from harness.sanitise import gates, names, secrets

# Terminal escapes of every kind (CSI, OSC up to BEL or ST, DCS/SOS/PM/APC, charset designations, two-byte
# escapes, 8-bit CSI), then the control characters left (tab stays).
TERMINAL_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]{0,4096}(?:\x07|\x1b\\)?|\x1b[PX^_][^\x1b]{0,4096}(?:\x1b\\)?"
    r"|\x1b[()*+\-./][ -~]?|\x1b[ -~]?"
)
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")
PEER_ID = re.compile(r"(?<![A-Za-z0-9])(?:12D3KooW[1-9A-HJ-NP-Za-km-z]{44}|Qm[1-9A-HJ-NP-Za-km-z]{44})(?![A-Za-z0-9])")
# Runs of text holding URL escapes (`%2Fip4%2F10.0.0.1`) or JSON escapes (`\u002fip4\u002f10.0.0.1`, `\/`):
# decoded, sanitised, and put back decoded only when something in them was replaced.
_PERCENT_RUN = re.compile(r"(?<![^\s\"'<>\\])[^\s\"'<>\\]*%[0-9A-Fa-f]{2}[^\s\"'<>\\]*")
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_JSON_RUN = re.compile(r"(?<![^\s\"'<>])[^\s\"'<>]*\\(?:u[0-9A-Fa-f]{4}|/)[^\s\"'<>]*")
_JSON_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})|\\/")
# Characters an escape may be decoded to without changing what the text is (no quote, no backslash).
# Gates of the address passes, in the same RE2 pass as the others (supersets of what each pass takes).
_G_DASH = gates.GATES.add(r"-[0-9]{1,3}-[0-9]{1,3}-")
_G_ARRAY = gates.GATES.add(r"\[\s*[0-9]{1,5}\s*,")
_G_V6 = gates.GATES.add(r"::|(?:[0-9A-Fa-f]{1,4}:){6}")
_G_V4 = gates.GATES.add(r"\.[0-9]{1,3}\.[0-9]")
_G_TCPDUMP = gates.GATES.add(r" > ")
_MISSING = object()
_DIGITS = frozenset("0123456789")
_CACHE_SIZE = 4096
_DOT_LETTER = re.compile(r"\.[A-Za-z]")
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789./:@[]-_~=&+,;% ")


def _lower(text: str) -> str:
    """`text.lower()` with the same length (a few non-ASCII letters lower to two characters)."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def is_placeholder(text: str) -> bool:
    """`<SERVER_NAT_IP>`: a value a report already shows sanitised."""
    return PLACEHOLDER.fullmatch(text) is not None


def placeholder_name(*parts: str) -> str:
    """`("server", "nat", "ip")` -> `<SERVER_NAT_IP>`; anything not alphanumeric becomes `_`."""
    name = "_".join(re.sub(r"[^A-Za-z0-9]+", "_", part).strip("_").upper() for part in parts if part)
    return f"<{name}>"


def _canonical_ip(text: str) -> str | None:
    """The canonical form of an address (v4-mapped v6 as v4), or None when `text` is none."""
    core = text.split("%", 1)[0]
    v4 = addr.v4_canonical(core) if "." in core and ":" not in core else None
    if v4 is not None:
        return v4
    try:
        ip = ipaddress.ip_address(core)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return addr.v6_canonical(ip)
    return str(ip)


def _kept_ip(canonical: str) -> bool:
    if ":" not in canonical:
        return addr.v4_kept(canonical)
    ip = ipaddress.IPv6Address(canonical)
    return ip.is_loopback or ip.is_unspecified


def _distinctive(host: str) -> bool:
    """A dotless name that cannot be an ordinary word of a log: it holds a digit, `-` or `_`."""
    return any(c.isdigit() or c in "-_" for c in host)


@dataclass
class Sanitiser:
    """Stable placeholders for one run. Build it with `from_addresses()` when the lab knows its addresses.

    Memory grows with the number of distinct values replaced (one map entry each), never with the number of
    lines; each line costs time proportional to its length.
    """

    known: dict[str, str] = field(default_factory=dict)
    """Real value -> placeholder: canonical addresses, lower-case host names, `user:<name>`; seeded by the
    caller, extended as new values appear. It stays in memory: no report ever receives it."""
    hash_peer_ids: bool = False
    _counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.known = {self._canonical(real): ph for real, ph in self.known.items()}
        self._blocks = secrets.KeyBlocks()
        self._dotted_hosts: set[str] = set()
        self._peer_hashes: dict[str, str] = {}
        self._v6_cache: dict[str, str | None] = {}  # candidate -> canonical, bounded by _CACHE_SIZE
        words = []
        for key in self.known:
            if _canonical_ip(key) is None and not key.startswith("user:"):
                if "." in key:
                    self._dotted_hosts.add(key)
                elif _distinctive(key):
                    words.append(key)
        self._host_words = (
            re.compile(
                r"(?i)(?<![A-Za-z0-9_.\-])(?:"
                + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
                + r")(?![A-Za-z0-9_\-]|\.[A-Za-z0-9])"
            )
            if words
            else None
        )

    # -- building -------------------------------------------------------------------------------------

    @classmethod
    def from_addresses(
        cls,
        addresses: Mapping[str, object],
        *,
        aliases: Mapping[str, str] | None = None,
        hostnames: Iterable[str] = (),
        users: Iterable[str] = (),
        hash_peer_ids: bool = False,
    ) -> Sanitiser:
        """Name every address a backend reported after its node: `<RELAY_IP>`, `<SERVER_NAT_IP>`, `<SERVER_LAN_IP>`.

        `addresses` maps node name -> NodeAddresses (anything with `public_ip`, `lan_ip`, `router_wan_ips`,
        `extra`). A node behind a router gets `<NODE_NAT_IP>` for its public address, a public node
        `<NODE_IP>`. `aliases` renames placeholders (`{"<SERVER_NAT_IP>": "<HOME_IP>"}`), so a runbook can use
        the names of an earlier report. `hostnames` (an inventory's) become `<HOST_n>`, `users` `<USER>`.
        """
        aliases = dict(aliases or {})
        known: dict[str, str] = {}

        def add(real: str | None, placeholder: str) -> None:
            canonical = _canonical_ip(real) if real else None
            if canonical is not None and not _kept_ip(canonical):
                known.setdefault(canonical, aliases.get(placeholder, placeholder))

        for node, address in addresses.items():
            lan_ip = getattr(address, "lan_ip", None)
            behind_nat = bool(lan_ip)
            add(getattr(address, "public_ip", None), placeholder_name(node, "nat_ip" if behind_nat else "ip"))
            add(lan_ip, placeholder_name(node, "lan_ip"))
        # Second pass: routers' own addresses, after every node's main addresses are claimed.
        for node, address in addresses.items():
            wans = [w for w in getattr(address, "router_wan_ips", ()) if w != getattr(address, "public_ip", None)]
            for index, wan in enumerate(wans, start=1):
                add(wan, placeholder_name(node, f"wan_ip_{index}" if len(wans) > 1 else "wan_ip"))
            for key, value in dict(getattr(address, "extra", {}) or {}).items():
                add(value, placeholder_name(key if key.startswith(node) else f"{node}_{key}"))
        for index, host in enumerate(sorted(set(hostnames), key=len, reverse=True), start=1):
            known.setdefault(host.lower(), f"<HOST_{index}>")
        for user in users:
            known.setdefault(f"user:{user}", "<USER>")
        return cls(known=known, hash_peer_ids=hash_peer_ids)

    @staticmethod
    def _canonical(real: str) -> str:
        if real.startswith("user:"):
            return real
        canonical = _canonical_ip(real)
        return canonical if canonical is not None else real.lower().rstrip(".")

    def _placeholder(self, key: str, kind: str) -> str:
        found = self.known.get(key)
        if found is None:
            if kind not in self._counters:  # continue after placeholders the caller seeded (`<HOST_1>`...)
                self._counters[kind] = sum(1 for v in set(self.known.values()) if v.startswith(f"<{kind}_"))
            self._counters[kind] += 1
            found = f"<{kind}_{self._counters[kind]}>"
            self.known[key] = found
        return found

    def _ip(self, canonical: str) -> str:
        return self._placeholder(canonical, "IP")

    def _host(self, name: str) -> str:
        key = name.lower().rstrip(".")
        if "." in key:
            self._dotted_hosts.add(key)
        return self._placeholder(key, "HOST")

    # -- sanitising ------------------------------------------------------------------------------------

    def line(self, text: str, stream: str = "") -> str:
        """Sanitise one log line (no newline). Stateful only across the lines of a private key block, per
        `stream` (one per node log), so interleaved logs do not leak each other's state."""
        if "\x1b" in text or "\x9b" in text:
            text = TERMINAL_ESCAPE.sub("", text)
        if not text.isprintable() and CONTROL.search(text):
            text = CONTROL.sub("", text)
        text, final = (
            self._blocks.line(text, stream)
            if self._blocks.active(stream) or "---" in text or "PuTTY" in text
            else (text, False)
        )
        if final:
            return text
        if "%" in text:
            text = _PERCENT_RUN.sub(lambda m: self._escaped(m.group(0), _PERCENT, _percent_char), text)
        if "\\u" in text or "\\/" in text:
            text = _JSON_RUN.sub(lambda m: self._escaped(m.group(0), _JSON_ESCAPE, _json_char), text)
        return self._inline(text)

    def text(self, text: str, stream: str = "") -> str:
        """Sanitise a whole text, line by line, keeping its line count (and its trailing newline, if any)."""
        result = "\n".join(self.line(line, stream) for line in text.split("\n"))
        self._blocks.reset(stream)
        return result

    def lines(self, lines: Iterable[str], stream: str = "") -> list[str]:
        return [self.line(line, stream) for line in lines]

    def _escaped(self, run: str, pattern: re.Pattern[str], decode) -> str:
        decoded = pattern.sub(decode, run)
        if decoded == run:
            return run
        clean = self._inline(decoded)
        return run if clean == decoded else clean

    def _inline(self, text: str) -> str:
        hits = set(gates.GATES.hits(text))  # one RE2 pass: which passes may find anything on this line
        if hits & secrets.GATE_IDS:
            text = secrets.scrub(text, hits)
        if hits & names.GATE_IDS:
            text = names.replace_users(text, _lower(text), hits)
            text = names.replace_hosts(text, _lower(text), self._host, hits)
        text = self._addresses(text, hits)
        if self._dotted_hosts and "." in text:
            text = self._known_dotted(text)
        if self._host_words is not None:
            text = self._host_words.sub(lambda m: self.known.get(m.group(0).lower(), m.group(0)), text)
        if self.hash_peer_ids and ("12D3KooW" in text or "Qm" in text):
            text = PEER_ID.sub(self._peer_hash, text)
        return text

    def _addresses(self, text: str, hits: set[int]) -> str:
        if _G_DASH in hits:
            text = self._dashed_hosts(text)
        if _G_ARRAY in hits:
            text = addr.ARRAY.sub(self._array, text)
        if _G_V6 in hits:  # an IPv6 address has `::` or seven colons (six and a v4 tail)
            text = self._v6(text)
        if _G_V4 in hits:
            if _G_TCPDUMP in hits:
                text = addr.TCPDUMP.sub(self._tcpdump, text)
            text = self._v4(text)
        return text

    def _dashed_hosts(self, text: str) -> str:
        out: list[str] = []
        last = 0
        for match in addr.DASH_QUAD.finditer(text):
            if match.start() < last or not addr.dash_left_ok(text, match.start()):
                continue
            if not addr.embedded_quad(match.group(0)):
                continue
            start, end = addr.host_token(text, match.start(), match.end())
            out += [text[last:start], self._host(text[start:end])]
            last = end
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def _array(self, match: re.Match[str]) -> str:
        ip = addr.array_address(match)
        if ip is None:
            return match.group(0)
        canonical = addr.v6_canonical(ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)
        return match.group(0) if _kept_ip(canonical) else self._ip(canonical)

    def _v6(self, text: str) -> str:
        out: list[str] = []
        last = 0
        for candidate_start, candidate_end in addr.v6_candidates(text):
            found = addr.v6_split(text, candidate_start, candidate_end, self._v6_resolve, self.known.__contains__)
            if found is None or not found[2]:
                continue  # no address, or a kept one (`::1`)
            start, end, canonical = found
            out += [text[last:start], self._ip(canonical)]
            last = end
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def _v6_resolve(self, candidate: str) -> str | None:
        if candidate in self.known:
            return candidate  # the common case: logged in canonical form and seen before, no parsing
        found = self._v6_cache.get(candidate, _MISSING)
        if found is _MISSING:
            found = addr.v6_resolve(candidate)
            if len(self._v6_cache) >= _CACHE_SIZE:
                self._v6_cache.clear()
            self._v6_cache[candidate] = found
        return found  # type: ignore[return-value]

    def _tcpdump(self, match: re.Match[str]) -> str:
        canonical = addr.v4_canonical(match.group(1))
        if canonical is None or addr.v4_kept(canonical) or not addr.v4_left_ok(match.string, match.start()):
            return match.group(0)
        return f"{self._ip(canonical)}.{match.group(2)}"

    def _v4(self, text: str) -> str:
        # The hot loop of a log full of addresses: the checks of `addresses.v4_left_ok` and
        # `addresses.in_host_name` are written out here, and the common case (a canonical address seen
        # before) costs one dictionary look-up.
        out: list[str] = []
        last = 0
        size = len(text)
        known_get = self.known.get
        for match in addr.V4.finditer(text):
            start, end = match.span()
            if start < last:
                continue
            if start:
                before = text[start - 1]
                if before in _DIGITS or (before == "." and start > 1 and text[start - 2] in _DIGITS):
                    continue  # inside `1.10.0.0.1`
                in_host = before == "." and start > 1 and (text[start - 2].isalpha() or text[start - 2] == "-")
            else:
                in_host = False
            if not in_host and end + 1 < size and text[end] == "." and text[end + 1].isalpha():
                in_host = True
            token = match.group()
            if in_host:
                if addr.v4_canonical(token) is None:
                    continue
                start, end = addr.host_token(text, start, end)
                if start < last:
                    continue
                out += [text[last:start], self._host(text[start:end])]
                last = end
                continue
            found = known_get(token)
            if found is None:
                canonical = addr.v4_canonical(token)
                if canonical is None or addr.v4_kept(canonical):
                    continue
                found = known_get(canonical)
                if found is None:
                    if addr.version_context(text, start, end):
                        continue
                    found = self._ip(canonical)
            out.append(text[last:start])
            out.append(found)
            last = end
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def _known_dotted(self, text: str) -> str:
        out: list[str] = []
        last = 0
        for match in _DOT_LETTER.finditer(text):
            if match.start() < last:
                continue
            start, end = addr.host_token(text, match.start(), match.end())
            if start < last or start >= end:
                continue
            token = text[start:end]
            lowered = token.lower()
            if lowered in self._dotted_hosts:
                out += [text[last:start], self.known[lowered]]
                last = end
                continue
            # `sub.relay.example.org`: a known name as the tail of a longer one.
            dot = lowered.find(".")
            while dot >= 0:
                tail = lowered[dot + 1 :]
                if "." in tail and tail in self._dotted_hosts:
                    out += [text[last : start + dot + 1], self.known[tail]]
                    last = end
                    break
                dot = lowered.find(".", dot + 1)
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)

    def _peer_hash(self, match: re.Match[str]) -> str:
        peer = match.group(0)
        found = self._peer_hashes.get(peer)
        if found is None:
            found = self._peer_hashes[peer] = "<PEER_" + hashlib.sha256(peer.encode()).hexdigest()[:10] + ">"
        return found

    # -- reversing (in memory only) ----------------------------------------------------------------------

    def restore(self, text: str) -> str:
        """Put real addresses and hosts back in place of their placeholders (for env handed to a node)."""
        reverse = {ph: real for real, ph in self.known.items() if not real.startswith("user:")}
        return PLACEHOLDER.sub(lambda m: reverse.get(m.group(0), m.group(0)), text)

    def placeholder_for(self, real: str) -> str:
        """The placeholder of one address or host, creating it if this run has not seen it yet."""
        canonical = _canonical_ip(real)
        if canonical is None:
            return real if PLACEHOLDER.fullmatch(real) else self._host(real)
        if _kept_ip(canonical):
            return real
        return self._ip(canonical)

    def placeholders(self) -> list[str]:
        """The placeholder names in use (safe to print: no real values)."""
        return sorted(set(self.known.values()))


def _percent_char(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _SAFE else match.group(0)


def _json_char(match: re.Match[str]) -> str:
    if match.group(1) is None:
        return "/"
    char = chr(int(match.group(1), 16))
    return char if char in _SAFE else match.group(0)
