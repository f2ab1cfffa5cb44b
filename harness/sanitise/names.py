"""Host names and user names, found by the context that says what they are.

A bare word is never taken for a host name: `relay`, `home` or `kaspad` are ordinary words of these logs.
A name is replaced where its context says it is one:

- hosts: `user@host`, a URL's authority, `/dns4/host/`, `host.example:443`, the destination and `-J` of an
  `ssh` command, OpenSSH's messages (`connect to host X port`, `Could not resolve hostname X`, `Connection to X
  closed`, `Permanently added 'X'`, `from X port 22`), DNS answers (dig, nslookup, host, /etc/hosts lines,
  `resolving X`), `host=`/`hostname:`/`ansible_host:` values;
- users: `user@`, `/home/U`, `/Users/U`, `C:\\Users\\U`, sshd's `Accepted publickey for U`, `invalid user U`,
  `session opened for user U`, sudo's `password for U:` and `sudo: U :`, `uid=1000(U)`, `ssh -l U`,
  `-o User=U`, `User U` of ssh_config, `user=`/`USER=`/`ansible_user:`/`--rpcuser=` values.

Each context is a pattern that starts with a literal and runs only when a cheap substring test says it may
match, so a line without any costs a few substring tests. A dotted host name found once is replaced everywhere
after that (`core`: a dictionary look-up per dotted token, so the cost does not grow with the names known).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from harness.sanitise.gates import GATES

HOST = r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62})(?:\.[A-Za-z0-9\-]{1,63})*"
USER = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}\$?"
_HOST_RE = re.compile(HOST)
_USER_RE = re.compile(USER)
USER_PLACEHOLDER = "<USER>"

# Hosts that name nothing of the user's.
KEPT_HOSTS = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
# `file.rs:245` is a source location, not `host:port`.
_SUFFIX_WORDS = (
    "rs py go c h cc cpp hpp js ts json yaml yml toml log txt md sh conf cfg ini rb java kt swift proto lock nft"
    " j2 html css xml csv tsv sql so o a dll exe zip gz tar bin out err pem key crt service socket timer mount"
)
_FILE_SUFFIXES = frozenset(_SUFFIX_WORDS.split())
_WORDISH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_USER_LEFT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+-")


def _splice(text: str, spans: list[tuple[int, int, str]]) -> str:
    """Replace non-overlapping (start, end, new) spans of `text`, given in order."""
    if not spans:
        return text
    out: list[str] = []
    last = 0
    for start, end, new in spans:
        if start < last:
            continue
        out += [text[last:start], new]
        last = end
    out.append(text[last:])
    return "".join(out)


# -- users ----------------------------------------------------------------------------------------------

# (hints: any of them in the line, or in the lower-cased line for `low` ones; pattern; case-insensitive).
_USER_PATTERNS: list[tuple[tuple[str, ...], bool, re.Pattern[str]]] = [
    # `/home/alice`, `/Users/luke`, `C:\Users\carol`, `C:\\Users\\carol` (JSON), `/var/home/x`
    (
        ("home", "Users", "users", "Documents"),
        False,
        re.compile(rf"(?:/home|/Users|:(?:\\\\|\\|/)(?i:Users|Documents and Settings))(?:\\\\|\\|/)(?P<u>{USER})"),
    ),
    # sshd: `Accepted publickey for ubuntu from`, `Failed password for invalid user admin from`
    (
        (" for ",),
        False,
        re.compile(
            rf"(?:Accepted|Failed|Postponed|Partial) [\w/\-]+ for (?:invalid user )?(?P<u>{USER})(?= from | port |$)"
        ),
    ),
    # `session opened for user ubuntu(uid=1000)`, `Invalid user admin from`, `authenticating user root`
    ((" user ",), True, re.compile(rf"(?:for|by|invalid|illegal|authenticating|from) user (?P<u>{USER})")),
    # sudo, su, id
    (("password for ",), True, re.compile(rf"password for (?P<u>{USER})(?=:|\s|$)")),
    (("sudo:",), False, re.compile(rf"sudo:\s+(?P<u>{USER}) :")),
    (("id=", "groups="), False, re.compile(rf"(?<=[=,])[0-9]+\((?P<u>{USER})\)")),
    (("sudo",), False, re.compile(rf"sudo\s+-u\s+(?P<u>{USER})")),
    (("su ",), False, re.compile(rf"(?:^|(?<=[\s;&|(]))su\s+(?:-\s+)?(?P<u>{USER})(?=\s|$)")),
    # `-o User=alice`, ssh_config `User alice`, `--user alice`, `--rpcuser alice`
    (("User",), False, re.compile(rf"-o\s*User=(?P<u>{USER})|^\s*User\s+(?P<v>{USER})\s*$", re.MULTILINE)),
    (("--",), True, re.compile(rf"--(?:rpcuser|user|username)\s+(?P<u>{USER})")),
]
_USER_GATES = [GATES.words(hints, ignore_case=lowered) for hints, lowered, _pattern in _USER_PATTERNS]
# `user=alice`, `USER=dave`, `ansible_user: deploy`, `"username": "bob"`, `--rpcuser=alice`, `LOGNAME=x`
_USER_KEY = re.compile(r"(?:user|username|user_name|logname)(?![a-z0-9_])(?P<q>[\"']?)\s{0,4}[:=]\s{0,4}[\"']?")
# `alice@host`, `git@github.com:`, `ubuntu@<SERVER_NAT_IP>`
_AT = re.compile(rf"@(?!sha(?:1|256|512):)(?=<[A-Z]|\[?[0-9A-Fa-f:.]+\]?|{HOST})")
_KEPT_USERS = frozenset({"", "-"})
_G_USER_KEY = GATES.words(("user", "logname"), ignore_case=True)
_G_AT = GATES.words(("@",))


def _user_value(text: str, start: int) -> tuple[int, int] | None:
    match = _USER_RE.match(text, start)
    if match is None or match.group(0) in _KEPT_USERS:
        return None
    return match.span()


_V4_AFTER_AT = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9.])")


def _address_after_at(text: str, at: int) -> bool:
    """What follows `user@` is a host: a placeholder, an address, a name (`pkg@1.2.3` is a version)."""
    if text.startswith("<", at) or text.startswith("[", at) or _V4_AFTER_AT.match(text, at):
        return True
    host = _HOST_RE.match(text, at)
    if host is None:
        return False
    name = host.group(0)
    if text.startswith(":", host.end()) and _is_hex(name):
        return True  # `user@2001:db8::1`
    return is_host(name) and not name.replace(".", "").isdigit()


def replace_users(text: str, low: str, hits: Iterable[int] | None = None) -> str:
    hits = set(GATES.hits(text) if hits is None else hits)
    spans: list[tuple[int, int, str]] = []
    for gate, (_hints, lowered, pattern) in zip(_USER_GATES, _USER_PATTERNS, strict=True):
        if gate not in hits:
            continue
        haystack = low if lowered else text
        for match in pattern.finditer(haystack):
            group = "v" if "v" in pattern.groupindex and match.group("v") is not None else "u"
            spans.append((*match.span(group), USER_PLACEHOLDER))
    if _G_USER_KEY in hits:
        for match in _USER_KEY.finditer(low):
            start = match.start()
            while start > 0 and match.start() - start < 64 and low[start - 1] in _WORDISH:
                start -= 1
            if start > 0 and low[start - 1] in "\"'":
                start -= 1
            found = _user_value(text, match.end())
            if found is not None:
                spans.append((*found, USER_PLACEHOLDER))
    if _G_AT in hits:
        for match in _AT.finditer(text):
            end = match.start()
            start = end
            while start > 0 and end - start < 64 and text[start - 1] in _USER_LEFT:
                start -= 1
            while start < end and text[start] in ".+-":
                start += 1
            if start < end and _USER_RE.fullmatch(text, start, end) and _address_after_at(text, end + 1):
                host = _HOST_RE.match(text, end + 1)
                if host is not None and host.end() < len(text) and text[host.end()] == "_":
                    continue  # `x@a_b` is no address
                spans.append((start, end, USER_PLACEHOLDER))
    if not spans:
        return text
    spans.sort()
    return _splice(text, [(s, e, new) for s, e, new in spans if not text.startswith("<", s)])


# -- hosts ----------------------------------------------------------------------------------------------

_HOST_PATTERNS: list[tuple[tuple[str, ...], bool, re.Pattern[str]]] = [
    # `<USER>@host`, `alice@host` (users are replaced first)
    (("@",), False, re.compile(rf"@(?P<h>{HOST})(?![A-Za-z0-9_\-])")),
    # URLs: scheme://[userinfo@]host
    (("://",), False, re.compile(rf"://(?:[^\s/@]{{1,256}}@)?(?P<h>{HOST})")),
    # multiaddrs
    (("/dns",), False, re.compile(r"/dns(?:4|6|addr)?/(?P<h>[^/\s\"',]{1,253})")),
    # OpenSSH
    (("connect to host ",), False, re.compile(rf"connect to host (?P<h>{HOST}) port")),
    (("resolve hostname ",), True, re.compile(rf"could not resolve hostname (?P<h>{HOST})")),
    (("Connection to ",), False, re.compile(rf"Connection to (?P<h>{HOST}) (?:port [0-9]+ )?closed")),
    (("Permanently added ",), False, re.compile(rf"Permanently added '\[?(?P<h>{HOST})")),
    (("host key for ",), True, re.compile(rf"host key for \[?(?P<h>{HOST})")),
    (("authenticity of host ",), False, re.compile(rf"authenticity of host '\[?(?P<h>{HOST})")),
    ((" port ",), False, re.compile(rf"(?:from|to|by|host) (?P<h>{HOST}) port [0-9]")),
    (("Authenticated to ", "Connecting to "), False, re.compile(rf"(?:Authenticated|Connecting) to (?P<h>{HOST})")),
    # DNS answers: dig, nslookup, host
    ((" IN ", "\tIN\t"), False, re.compile(rf"^(?P<h>{HOST})\.?\s+[0-9]+\s+IN\s+[A-Z]+\b", re.MULTILINE)),
    (
        (" IN ", "\tIN\t"),
        False,
        re.compile(rf"\bIN\s+(?:CNAME|PTR|NS|MX\s+[0-9]+|SRV\s+[0-9]+\s+[0-9]+\s+[0-9]+)\s+(?P<h>{HOST})"),
    ),
    (("Name:", "Server:"), False, re.compile(rf"^(?:Name|Server):\s+(?P<h>{HOST})", re.MULTILINE)),
    (("name = ",), False, re.compile(rf"name = (?P<h>{HOST})")),
    (
        (" has address ", " has IPv6 address ", " is an alias for ", " mail is handled by "),
        False,
        re.compile(rf"^(?P<h>{HOST}) (?:has (?:IPv6 )?address|is an alias for|mail is handled by)", re.MULTILINE),
    ),
    (
        ("is an alias for ", "domain name pointer ", "mail is handled by "),
        False,
        re.compile(rf"(?:is an alias for|domain name pointer|mail is handled by [0-9]+) (?P<h>{HOST})"),
    ),
    (
        ("resolv", "lookup", "looking up", "querying"),
        True,
        re.compile(
            rf"(?:resolv(?:e|ed|ing)|lookup(?: of| for)?|looking up|querying) [\"']?(?P<h>{HOST}\.[a-z]{{2,63}})"
        ),
    ),
]
_HOST_GATES = [GATES.words(hints, ignore_case=lowered) for hints, lowered, _pattern in _HOST_PATTERNS]
# `host=x`, `hostname: x`, `ansible_host: x`, `"rhost": "x"`, `HostName x` (ssh_config), `Host: x` (HTTP)
_HOST_KEY = re.compile(
    r"(?:host|hostname|host_name|fqdn|server_name|dns_name)(?![a-z0-9_])[\"']?"
    r"(?:\s{0,4}[:=]\s{0,4}|(?<=hostname) +)[\"']?"
)
# `relay.example.net:4001`, found from its `.tld:port` end
_HOST_PORT = re.compile(r"\.[A-Za-z][A-Za-z0-9\-]{0,62}:[0-9]{1,5}(?![0-9])")
# `/etc/hosts` and `getent hosts` lines: an address then names.
_HOSTS_FILE = re.compile(
    r"^\s*(<[A-Z][A-Z0-9_]*>|(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f:]*::?[0-9A-Fa-f:.]*)((?:\s+" + HOST + r")+)\s*$"
)
# `ssh [options] [user@]host [command]`
SSH_COMMAND = re.compile(r"(?<![\w\-/.])(?:ssh|autossh|mosh)((?:\s+\S+){1,24})")
_SSH_FLAG_WITH_ARG = frozenset("BbcDEeFIiJLlmOoPpQRSWw")
# Where a command starts: the line's start (after a shell prompt or `+ ` of `set -x`), after `;`, `&&`, `|`,
# `$(`, a backquote or a quote, after `sudo`, `exec`, `timeout N`, `-e` (rsync/scp) or `command=`.
_COMMAND_START = re.compile(
    r"(?:^\s*(?:[$#%>+]+\s*|\S*[$#]\s+)|[;&|(`\"']\s*|\$\(\s*|\b(?:sudo|exec|nohup|env|time)\s+|\btimeout\s+\S+\s+"
    r"|-e\s+[\"']?|(?i:command|cmd|exec|running|run)\s*[:=]?\s*[\"'`]?)$"
)
_SHA = frozenset({"sha1", "sha256", "sha512"})
_G_HOST_KEY = GATES.words(("host", "fqdn", "server_name", "dns_name"), ignore_case=True)
_G_HOST_PORT = GATES.add(r"\.[A-Za-z][A-Za-z0-9\-]*:[0-9]")
_G_SSH = GATES.words(("ssh ", "mosh "))
_G_HOSTS_FILE = GATES.add(r"^\s*(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f:]*::|<[A-Z])[^\s]*\s+\S*\.")
GATE_IDS = frozenset([*_USER_GATES, _G_USER_KEY, _G_AT, *_HOST_GATES, _G_HOST_KEY, _G_HOST_PORT, _G_SSH, _G_HOSTS_FILE])


def _is_hex(name: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in name)


def is_host(name: str) -> bool:
    """A name worth replacing: not an address (the address pass takes those), not localhost, not a number
    or a version (`1.2.3`, `v1.0.1`: a host name's last label has a letter)."""
    lowered = name.lower().rstrip(".")
    if not lowered or lowered in KEPT_HOSTS or lowered.startswith("<") or lowered in _SHA or ":" in lowered:
        return False
    last = lowered.rsplit(".", 1)[-1]
    if "." in lowered and not any(c.isalpha() for c in last):
        return False
    if "." in lowered and last[0] == "v" and last[1:].isdigit():
        return False
    return not lowered.isdigit()


def host_port_ok(name: str) -> bool:
    """`x.rs:245` is a source location, `harness.cli:main` a module; `relay.example.net:4001` is a host."""
    return name.rsplit(".", 1)[-1].lower() not in _FILE_SUFFIXES


def replace_hosts(text: str, low: str, host: Callable[[str], str], hits: Iterable[int] | None = None) -> str:
    hits = set(GATES.hits(text) if hits is None else hits)
    spans: list[tuple[int, int, str]] = []

    def add(start: int, end: int) -> None:
        name = text[start:end].rstrip(".")
        if len(name) <= 4 and text[start + len(name) : start + len(name) + 1] == ":" and _is_hex(name):
            return  # the first group of an IPv6 address (`http://fc00::1:80/`): the address pass takes it
        if is_host(name):
            spans.append((start, start + len(name), host(name)))

    for gate, (_hints, lowered, pattern) in zip(_HOST_GATES, _HOST_PATTERNS, strict=True):
        if gate not in hits:
            continue
        haystack = low if lowered else text
        for match in pattern.finditer(haystack):
            add(*match.span("h"))
    if _G_HOST_KEY in hits:
        for match in _HOST_KEY.finditer(low):
            start = match.start()
            glued = start > 0 and low[start - 1] in _WORDISH and low[start - 1] != "_"
            # glued: `ghost=` is no host key, but `rhost=`, `ansible_host`, `dcutr_host` are
            if glued and not (low[start - 1] == "r" and (start < 2 or low[start - 2] not in _WORDISH)):
                continue
            found = _HOST_RE.match(text, match.end())
            if found is not None:
                add(*found.span())
    if _G_HOST_PORT in hits:
        for match in _HOST_PORT.finditer(text):
            start = match.start()
            while start > 0 and match.start() - start < 253 and text[start - 1] in _WORDISH and text[start - 1] != "_":
                start -= 1
            while start < match.start() and text[start] in ".-":
                start += 1
            if start > 0 and text[start - 1] in "@/\\_":
                continue
            end = match.end() - len(match.group(0).rsplit(":", 1)[1]) - 1
            if start < match.start() and _HOST_RE.fullmatch(text, start, end) and host_port_ok(text[start:end]):
                add(start, end)
    if spans:
        spans.sort()
        text = _splice(text, spans)
    if _G_SSH in hits:
        text = SSH_COMMAND.sub(lambda m: _ssh_command(m, host), text)
    if _G_HOSTS_FILE in hits:
        match = _HOSTS_FILE.match(text)
        if match is not None and "." in match.group(2):
            names = match.group(2)
            clean = _HOST_RE.sub(lambda m: host(m.group(0)) if is_host(m.group(0)) else m.group(0), names)
            text = text[: match.start(2)] + clean + text[match.end(2) :]
    return text


def _ssh_command(match: re.Match[str], host: Callable[[str], str]) -> str:
    """Replace the destination (and `-J` jump hosts, the `-l` user) of one ssh command; options and the remote
    command stay. In prose ("ssh connection failed") only a destination that looks like a host is taken."""
    text = match.string
    at_command = _COMMAND_START.search(text, max(0, match.start() - 40), match.start()) is not None
    words = re.split(r"(\s+)", match.group(1))
    expect_arg: str | None = None
    for index, word in enumerate(words):
        if not word or word.isspace():
            continue
        if expect_arg is not None:
            if expect_arg == "J":
                words[index] = ",".join(_dest(part, host, True) for part in word.split(","))
            elif expect_arg == "l" and not word.startswith("<"):
                words[index] = USER_PLACEHOLDER
            expect_arg = None
            continue
        if word.startswith("-") and len(word) > 1:
            flag = word[1]
            if flag in _SSH_FLAG_WITH_ARG and len(word) == 2:
                expect_arg = flag
            elif flag == "J":
                words[index] = "-J" + ",".join(_dest(part, host, True) for part in word[2:].split(","))
            elif flag == "l" and not word[2:].startswith("<"):
                words[index] = "-l" + USER_PLACEHOLDER
            continue
        words[index] = _dest(word, host, at_command)
        break
    return match.group(0)[: match.start(1) - match.start()] + "".join(words)


def _dest(word: str, host: Callable[[str], str], at_command: bool) -> str:
    """`host`, `user@host`, `host:path` (the user part is replaced already)."""
    if "://" in word:
        return word
    user, at, rest = word.rpartition("@")
    name, sep, tail = rest.partition(":")
    if "/" in name or not _HOST_RE.fullmatch(name) or not is_host(name):
        return word
    if not (at_command or at or "." in name or any(c.isdigit() or c == "-" for c in name)):
        return word
    return f"{user}{at}{host(name)}{sep}{tail}"
