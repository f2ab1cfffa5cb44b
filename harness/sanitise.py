"""Replace addresses, hostnames, users and secrets with stable placeholders.

One `Sanitiser` lives for one run: the same real value always maps to the same placeholder, so facts compared
across nodes (an address one peer logs, the address the other one dials) still compare equal after
sanitising, and checkpoint matching runs on sanitised text only. The real-to-placeholder map stays in memory:
`restore()` uses it to turn a templated env value back into a real address before a node starts; no report
ever receives it.

What is replaced:
- IPv4 and IPv6 addresses wherever they stand (multiaddrs, `ip:port`, `[v6]:port`, URLs, JSON strings, glued to
  punctuation, v4-mapped v6, zone ids); ports are kept, they identify nothing and the conntrack ground truth
  compares them. Loopback and unspecified addresses are kept too (`0.0.0.0`, `127.0.0.1`, `::`, `::1`): they
  name no machine and the logs read better with them.
- hosts of `/dns*/` multiaddr parts, hostnames and users given by the inventory, `/home/<user>`, `/Users/<user>`,
  `user@` in front of a replaced host, AWS-style `ip-10-0-0-5` host names;
- private key blocks (every line of the block, so line numbers stay), and token-like secrets: values of
  `password=`, `token:`, `--secret-key-seed 42`, `Authorization: Bearer ...`, and well-known token formats.

Kept: peer ids (public keys; `hash_peer_ids=True` replaces them by a stable hash), timestamps, version numbers in
user agents (`kaspad/1.2.3.4`, `/kaspad:1.2.3.4/`, `v1.2.3.4`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# A candidate IPv6 token: hex groups and colons (at least two), an optional dotted v4 tail, an optional zone.
# It must not touch a word character, a colon or a dot on the left, so `libp2p_core::transport` and
# `15:23:11` inside a timestamp never start a candidate; the parser then decides.
_V6_CANDIDATE = re.compile(r"(?<![\w:.%])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f]*:)[0-9A-Fa-f:.]{2,}(?:%[\w.\-]+)?(?![\w])")
_V4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
# `kaspad/1.2.3.4` (a product token: name directly after start, space, quote or bracket) and `/kaspad:1.2.3.4`
# are version numbers in a user agent, not addresses.
_VERSION_BEFORE = re.compile(r"(?:(?:^|[\s\"'(\[=,])[A-Za-z][\w.\-]*/|/[A-Za-z][\w.\-]*:)$")
_DNS_MULTIADDR = re.compile(r"(/dns(?:4|6|addr)?/)([^/\s\"',]+)")
_AWS_HOST = re.compile(r"\bip-\d{1,3}-\d{1,3}-\d{1,3}-\d{1,3}\b")
_HOME = re.compile(r"(/home/|/Users/)([A-Za-z_][\w.\-]*)")
_USER_AT_PLACEHOLDER = re.compile(r"(?<![\w.\-])([A-Za-z_][\w.\-]*)@(?=<(?:[A-Z0-9_]+)>)")
_KEY_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
_KEY_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY( BLOCK)?-----")
_SECRET_NAME = r"[\w\-]*(?:password|passwd|passphrase|secret|token|api[_\-]?key|private[_\-]?key|seed)[\w\-]*"
_SECRET_VALUE = r"(?P<value>[^\s\"',;&)}\]]+)"
# name=value, name: value, "name": "value" (the value stops at quotes, spaces and separators) ...
_SECRET_ASSIGN = re.compile(rf"(?i)(?P<name>[\"']?\b{_SECRET_NAME}[\"']?)(?P<sep>\s*[=:]\s*[\"']?){_SECRET_VALUE}")
# ... and `--secret-key-seed 42`: only flags take a space-separated value, prose like "token expired" stays.
_SECRET_FLAG = re.compile(rf"(?i)(?P<name>(?<![\w\-])--{_SECRET_NAME})(?P<sep>\s+)(?=[^\s\-]){_SECRET_VALUE}")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/\-]{8,}=*")
_TOKEN_FORMATS = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|AKIA[0-9A-Z]{16}|xox[abprs]-[A-Za-z0-9\-]{10,}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}|sk-[A-Za-z0-9]{20,})\b"
)
_PEER_ID = re.compile(r"\b(?:12D3KooW[1-9A-HJ-NP-Za-km-z]{44}|Qm[1-9A-HJ-NP-Za-km-z]{44})\b")
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


def is_placeholder(text: str) -> bool:
    """`<SERVER_NAT_IP>`: a value a report already shows sanitised."""
    return _PLACEHOLDER.fullmatch(text) is not None


def _is_kept(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return _is_kept(ip.ipv4_mapped)
    return ip.is_loopback or ip.is_unspecified


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def placeholder_name(*parts: str) -> str:
    """`("server", "nat", "ip")` -> `<SERVER_NAT_IP>`; anything not alphanumeric becomes `_`."""
    name = "_".join(re.sub(r"[^A-Za-z0-9]+", "_", part).strip("_").upper() for part in parts if part)
    return f"<{name}>"


@dataclass
class Sanitiser:
    """Stable placeholders for one run. Build it with `from_addresses()` when the lab knows its addresses."""

    known: dict[str, str] = field(default_factory=dict)
    """Real value (address, host, user) -> placeholder, seeded by the caller, extended as new values appear."""
    hash_peer_ids: bool = False
    _counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Keys are compared in canonical form so `2001:DB8::1` and `2001:db8:0::1` are one address.
        self.known = {self._canonical(real): ph for real, ph in self.known.items()}
        self._key_block_streams: set[str] = set()
        self._host_pattern: tuple[tuple[str, ...], re.Pattern[str]] | None = None

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
        the names of an earlier report.
        """
        aliases = dict(aliases or {})
        known: dict[str, str] = {}

        def add(real: str | None, placeholder: str) -> None:
            if real and _parse_ip(real) is not None and not _is_kept(_parse_ip(real)):  # type: ignore[arg-type]
                known.setdefault(real, aliases.get(placeholder, placeholder))

        for node, addr in addresses.items():
            lan_ip = getattr(addr, "lan_ip", None)
            behind_nat = bool(lan_ip)
            add(getattr(addr, "public_ip", None), placeholder_name(node, "nat_ip" if behind_nat else "ip"))
            add(lan_ip, placeholder_name(node, "lan_ip"))
        # Second pass: routers' own addresses, after every node's main addresses are claimed.
        for node, addr in addresses.items():
            wans = [w for w in getattr(addr, "router_wan_ips", ()) if w != getattr(addr, "public_ip", None)]
            for index, wan in enumerate(wans, start=1):
                add(wan, placeholder_name(node, f"wan_ip_{index}" if len(wans) > 1 else "wan_ip"))
            for key, value in dict(getattr(addr, "extra", {}) or {}).items():
                add(value, placeholder_name(key if key.startswith(node) else f"{node}_{key}"))
        sanitiser = cls(known=known, hash_peer_ids=hash_peer_ids)
        for index, host in enumerate(sorted(set(hostnames), key=len, reverse=True), start=1):
            sanitiser.known.setdefault(host.lower(), f"<HOST_{index}>")
        for user in users:
            sanitiser.known.setdefault(f"user:{user}", "<USER>")
        return sanitiser

    @staticmethod
    def _canonical(real: str) -> str:
        ip = _parse_ip(real)
        if ip is None:
            return real.lower() if not real.startswith("user:") else real
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ip)

    def _placeholder(self, real: str, kind: str) -> str:
        key = self._canonical(real)
        found = self.known.get(key)
        if found is None:
            if kind not in self._counters:  # continue after placeholders the caller seeded (`<HOST_1>`...)
                self._counters[kind] = sum(1 for v in set(self.known.values()) if v.startswith(f"<{kind}_"))
            self._counters[kind] += 1
            found = f"<{kind}_{self._counters[kind]}>"
            self.known[key] = found
        return found

    # -- sanitising ------------------------------------------------------------------------------------

    def line(self, text: str, stream: str = "") -> str:
        """Sanitise one log line (no newline). Stateful only across the lines of a private key block, per
        `stream` (one per node log), so interleaved logs do not leak each other's state."""
        text = ANSI_ESCAPE.sub("", text)
        if stream in self._key_block_streams:
            if _KEY_END.search(text):
                self._key_block_streams.discard(stream)
            return "<PRIVATE_KEY>"
        begin = _KEY_BEGIN.search(text)
        if begin:
            end = _KEY_END.search(text, begin.end())
            if end:  # a whole key on one line (a JSON string with \n escapes, say)
                text = text[: begin.start()] + "<PRIVATE_KEY>" + text[end.end() :]
            else:
                self._key_block_streams.add(stream)
                return text[: begin.start()] + "<PRIVATE_KEY>"
        text = _TOKEN_FORMATS.sub("<SECRET>", text)
        text = _BEARER.sub(lambda m: f"{m.group(1)} <SECRET>", text)
        text = _SECRET_ASSIGN.sub(self._secret_assign, text)
        text = _SECRET_FLAG.sub(self._secret_assign, text)
        text = _DNS_MULTIADDR.sub(lambda m: m.group(1) + self._host(m.group(2)), text)
        text = self._hostnames(text)
        text = _AWS_HOST.sub(lambda m: self._host(m.group(0)), text)
        text = _V6_CANDIDATE.sub(self._v6, text)
        text = _V4.sub(self._v4, text)
        text = _HOME.sub(lambda m: m.group(1) + "<USER>", text)
        text = self._users(text)
        text = _USER_AT_PLACEHOLDER.sub("<USER>@", text)
        if self.hash_peer_ids:
            text = _PEER_ID.sub(lambda m: "<PEER_" + hashlib.sha256(m.group(0).encode()).hexdigest()[:10] + ">", text)
        return text

    def text(self, text: str, stream: str = "") -> str:
        """Sanitise a whole text, line by line, keeping its line count (and its trailing newline, if any)."""
        lines = text.split("\n")
        result = "\n".join(self.line(line, stream) for line in lines)
        self._key_block_streams.discard(stream)
        return result

    def lines(self, lines: Iterable[str], stream: str = "") -> list[str]:
        return [self.line(line, stream) for line in lines]

    def _secret_assign(self, match: re.Match[str]) -> str:
        value = match.group("value")
        if _PLACEHOLDER.fullmatch(value) or value.lower() in {"true", "false", "none", "null"}:
            return match.group(0)
        return f"{match.group('name')}{match.group('sep')}<SECRET>"

    def _host(self, host: str) -> str:
        if _PLACEHOLDER.fullmatch(host) or _parse_ip(host) is not None:
            return host
        return self._placeholder(host, "HOST")

    def _hostnames(self, text: str) -> str:
        hosts = tuple(k for k in self.known if _parse_ip(k) is None and not k.startswith("user:"))
        if not hosts:
            return text
        if self._host_pattern is None or self._host_pattern[0] != hosts:
            alternatives = "|".join(re.escape(h) for h in sorted(hosts, key=len, reverse=True))
            self._host_pattern = (hosts, re.compile(rf"(?i)(?<![\w.\-])(?:{alternatives})(?![\w\-]|\.\w)"))
        return self._host_pattern[1].sub(lambda m: self.known[m.group(0).lower()], text)

    def _users(self, text: str) -> str:
        for key in self.known:
            if key.startswith("user:"):
                text = re.sub(rf"(?<![\w.\-]){re.escape(key[5:])}(?=@)", "<USER>", text)
        return text

    def _v6(self, match: re.Match[str]) -> str:
        token = match.group(0)
        # A trailing separator, or an unbracketed `:port`, may have been swallowed by the candidate.
        dotless = token.rstrip(".")
        single_colon = dotless[:-1] if dotless.endswith(":") and not dotless.endswith("::") else dotless
        for candidate in (token, dotless, single_colon, re.sub(r":\d{1,5}$", "", dotless)):
            if candidate.count(":") < 2:
                continue
            ip = _parse_ip(candidate)
            if ip is None or not isinstance(ip, ipaddress.IPv6Address):
                continue
            if _is_kept(ip):
                return token
            rest = token[len(candidate) :]
            real = str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else candidate
            return self._placeholder(real, "IP") + rest
        return token

    def _v4(self, match: re.Match[str]) -> str:
        token = match.group(0)
        ip = _parse_ip(token)
        if ip is None or _is_kept(ip):
            return token
        if _VERSION_BEFORE.search(match.string[: match.start()]):
            return token
        return self._placeholder(token, "IP")

    # -- reversing (in memory only) ----------------------------------------------------------------------

    def restore(self, text: str) -> str:
        """Put real addresses and hosts back in place of their placeholders (for env handed to a node)."""
        reverse = {ph: real for real, ph in self.known.items() if not real.startswith("user:")}
        return _PLACEHOLDER.sub(lambda m: reverse.get(m.group(0), m.group(0)), text)

    def placeholder_for(self, real: str) -> str:
        """The placeholder of one address or host, creating it if this run has not seen it yet."""
        ip = _parse_ip(real)
        if ip is None:
            return self._host(real)
        if _is_kept(ip):
            return real
        return self._placeholder(real, "IP")

    def placeholders(self) -> list[str]:
        """The placeholder names in use (safe to print: no real values)."""
        return sorted(set(self.known.values()))
