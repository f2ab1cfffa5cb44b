"""The ssh options of an Ansible inventory (`ansible_ssh_common_args`, `ansible_ssh_extra_args`, `ansible_ssh_args`),
read the way OpenSSH reads them, for the few that change how dcutr-lab connects.

    -J user@host:port,...  /  -o ProxyJump=...      a jump chain, reached through the same path as dcutr_jump
    -o UserKnownHostsFile=FILE                      the host's known_hosts (as dcutr_known_hosts)
    -o StrictHostKeyChecking=yes                    what dcutr-lab always does (other values are refused)
    -o ConnectTimeout=N / -o ServerAliveInterval=N  the connect timeout and the keepalive of that host
    -C, -o Compression, -o ControlMaster/ControlPersist/ControlPath
                                                    no effect (dcutr-lab keeps one connection per host and runs
                                                    no interactive shell): accepted, and listed as such

Contract: `parse_ssh_args` returns the options it understood, or raises `SshArgsError` naming the option it does
not support, so an option is never silently ignored. Pure: no network, no file is opened.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

SUPPORTED = (
    "-J / ProxyJump",
    "UserKnownHostsFile",
    "StrictHostKeyChecking=yes",
    "ConnectTimeout",
    "ServerAliveInterval",
    "-C / Compression",
    "ControlMaster",
    "ControlPersist",
    "ControlPath",
)
# Options that do not change what dcutr-lab does (it keeps one paramiko connection per host).
_NO_EFFECT = {"compression", "controlmaster", "controlpersist", "controlpath"}
_SPEC = re.compile(
    r"^(?:ssh://)?(?:(?P<user>[A-Za-z_][A-Za-z0-9_.\-]*\$?)@)?"
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9][A-Za-z0-9.\-_]*))(?::(?P<port>\d{1,5}))?/?$"
)


class SshArgsError(ValueError):
    """An ssh option dcutr-lab does not read or cannot honour; the message names it."""


@dataclass(frozen=True)
class Hop:
    """One jump host of a ProxyJump chain, as written."""

    user: str | None
    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}{':' + str(self.port) if self.port else ''}"


@dataclass
class SshOptions:
    jump: list[Hop] | None = None  # None: not said; []: ProxyJump=none
    known_hosts: str | None = None
    connect_timeout: float | None = None
    keepalive: int | None = None
    no_effect: list[str] = field(default_factory=list)

    def merge(self, other: SshOptions) -> SshOptions:
        """OpenSSH keeps the first value of an option: `self` is read before `other`."""
        return SshOptions(
            jump=self.jump if self.jump is not None else other.jump,
            known_hosts=self.known_hosts or other.known_hosts,
            connect_timeout=self.connect_timeout if self.connect_timeout is not None else other.connect_timeout,
            keepalive=self.keepalive if self.keepalive is not None else other.keepalive,
            no_effect=[*self.no_effect, *(o for o in other.no_effect if o not in self.no_effect)],
        )


def parse_jump(spec: str) -> list[Hop]:
    """`user@host:port,user2@host2` (or `none`) as hops, first hop first."""
    spec = spec.strip()
    if spec.lower() == "none":
        return []
    hops = []
    for part in spec.split(","):
        found = _SPEC.match(part.strip())
        if not found:
            raise SshArgsError(f"ProxyJump {part.strip()!r}: expected [user@]host[:port]")
        port = int(found["port"]) if found["port"] else None
        if port is not None and not 1 <= port <= 65535:
            raise SshArgsError(f"ProxyJump {part.strip()!r}: port out of range")
        hops.append(Hop(found["user"], found["v6"] or found["host"], port))
    return hops


def _number(name: str, value: str) -> int:
    if not value.isdigit():
        raise SshArgsError(f"{name}={value!r}: expected a number of seconds")
    return int(value)


def _option(options: SshOptions, text: str) -> None:
    """One `-o` argument: `Key=value` or `Key value`."""
    key, sep, value = text.partition("=")
    if not sep:
        key, _, value = text.strip().partition(" ")
    key, value = key.strip(), value.strip()
    lowered = key.lower()
    if not key or not value:
        raise SshArgsError(f"-o {text!r}: expected Option=value")
    if lowered == "proxyjump":
        if options.jump is None:
            options.jump = parse_jump(value)
    elif lowered == "userknownhostsfile":
        if len(value.split()) > 1:
            raise SshArgsError(f"UserKnownHostsFile {value!r}: give one file")
        options.known_hosts = options.known_hosts or value
    elif lowered == "stricthostkeychecking":
        if value.lower() not in ("yes", "true"):
            raise SshArgsError(
                f"StrictHostKeyChecking={value}: dcutr-lab checks host keys strictly; "
                "trust new ones for one run with --accept-new-host-keys"
            )
    elif lowered == "connecttimeout":
        if options.connect_timeout is None:
            options.connect_timeout = float(_number(key, value))
    elif lowered == "serveraliveinterval":
        if options.keepalive is None:
            options.keepalive = _number(key, value)
    elif lowered in _NO_EFFECT:
        options.no_effect.append(f"{key}={value}")
    elif lowered == "proxycommand":
        raise SshArgsError("ProxyCommand is not supported: use ProxyJump (-J) or dcutr_jump")
    else:
        raise SshArgsError(f"ssh option {key!r} is not supported by dcutr-lab (supported: {', '.join(SUPPORTED)})")


def parse_ssh_args(text: str) -> SshOptions:
    """The options of one `ansible_ssh_*_args` string."""
    try:
        words = shlex.split(text)
    except ValueError as error:
        raise SshArgsError(f"cannot split {text!r}: {error}") from None
    options = SshOptions()
    index = 0

    def value(word: str, flag: str) -> str:
        """`-Jx` or `-J x`: the value glued to the flag, else the next word."""
        nonlocal index
        if len(word) > len(flag):
            return word[len(flag) :]
        if index >= len(words):
            raise SshArgsError(f"{flag} needs a value")
        index += 1
        return words[index - 1]

    while index < len(words):
        word = words[index]
        index += 1
        if word.startswith("-o"):
            _option(options, value(word, "-o"))
        elif word.startswith("-J"):
            hops = parse_jump(value(word, "-J"))
            if options.jump is None:
                options.jump = hops
        elif word == "-C":
            options.no_effect.append("-C")
        elif word.startswith("-") and len(word) > 1:
            raise SshArgsError(f"ssh option {word!r} is not supported by dcutr-lab (supported: {', '.join(SUPPORTED)})")
        else:
            raise SshArgsError(f"{word!r} is not an ssh option")
    return options
