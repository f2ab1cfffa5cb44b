"""One cheap test per line: may it hold a secret, a user or a host name at all?

Most log lines hold neither, and Python's `re` is slow on a long alternation of words (it tries every branch
at almost every position). RE2 (`google-re2`) runs the same alternation as a DFA in one pass, whatever the
number of words, so each module's detailed patterns run only on the lines this gate lets through. Without
the `re2` module the gate is the same pattern in `re`: slower, never different.
"""

from __future__ import annotations

import re

try:
    import re2 as _engine  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - google-re2 is a dependency; this keeps a broken install working
    _engine = None

# Where `secrets.TOKEN_FORMATS` may match.
TOKEN_WORDS = (
    r"gh[pousr]_|github_pat_|gl(?:pat|dt|rt|soat|ptt|cbt|imt|agent)-|_(?:live|test)_|whsec_|sk-"
    r"|A(?:KIA|SIA|GPA|IDA|ROA|Iza)|xox[abposr]-|xapp-|npm_|pypi-|hf_|dop_v1_|SG\.|eyJ|CA[AEIM][SI]|080[0-3]12"
)
# Everything `secrets.scrub` and `secrets.KeyBlocks` look for, as words: a superset, never a subset.
SECRET_WORDS = (
    r"(?i:pass|pwd|secret|token|seed|mnemonic|credential|cookie|auth|key|phrase|words|bearer|mysql|mariadb"
    r"|redis-cli|htpasswd|://|-u|--user|---|putty)"
    # token formats are case-sensitive (a random peer id holds `cads` or `Key` often enough)
    rf"|{TOKEN_WORDS}"
    r"|[\"'][a-z]{3,8} [a-z]{3,8} [a-z]{3,8} "
)
# Everything `names` looks for.
NAME_WORDS = (
    r"@|://|/dns|\\|/home|/Users|(?i:users|documents and|for |user|sudo|id=|su |--|logname|host|fqdn|server_name"
    r"|dns_name|resolv|lookup|looking up|querying|ssh |mosh |connect(?:ing)? to|authenticated to|permanently"
    r"|connection to)|port [0-9]| IN |\tIN\t|Name:|Server:|name = | has address | has IPv6 address | is an alias "
    r"| mail is |pointer"
    r"|^\s*(?:[0-9]{1,3}\.){3}[0-9]{1,3}\s|^\s*[0-9A-Fa-f:]*::|^\s*<[A-Z]|\.[A-Za-z][A-Za-z0-9-]*:[0-9]"
)


class Gate:
    def __init__(self, pattern: str) -> None:
        if _engine is not None:
            compiled = _engine.compile(pattern.encode())
            self._search = lambda text: compiled.search(text.encode("utf-8", "surrogatepass")) is not None
        else:
            fallback = re.compile(pattern, re.MULTILINE)
            self._search = lambda text: fallback.search(text) is not None

    def __call__(self, text: str) -> bool:
        return self._search(text)


secrets_gate = Gate(SECRET_WORDS)
names_gate = Gate(NAME_WORDS)
tokens_gate = Gate(TOKEN_WORDS)
any_gate = Gate(f"{SECRET_WORDS}|{NAME_WORDS}")
