"""Secrets: named values, token formats, libp2p keys, private key blocks. All patterns run in linear time.

A pattern that scans a class of characters starts only where the previous character is not of that class
(a look-behind), so each token of a line is scanned a bounded number of times: 100 KB of base64url or
`a-a-a-...` on one line costs a few milliseconds, not minutes.

Named values: a name that ends in a secret word (`password`, `passwd`, `pass`, `pwd`, `passphrase`, `secret`,
`token`, `seed`, `mnemonic`, `credential(s)`, `cookie`, `auth`, `apikey`, `keypair`, `privkey`, `<qualifier>_key`
like `api_key`, `identity_key`, `libp2p_key`), glued or not (`RPCPASS`, `*_PASS`, `--rpcpass`, `-rpcpass`),
then `=`, `:` or (for a flag) a space. `seeder` and `tokens` do not end in a secret word, so `Using DNS
seeder: x` and `tokens: 5` stay. The value ends where its quoting says: a quoted value at its closing quote
(escapes honoured), `name=value` at white space, `name: value` at the end of the line or of the field
(`, next: ...`, ` }`) - so a value with spaces, `&`, `,` or `;` goes whole.

Commands: `sshpass -p x`, `mysql -pS3cr3t`, `redis-cli -a x`, `curl -u user:pass`; URL passwords
(`scheme://user:pass@`), `Authorization:` values, `Bearer x`, cookies; token formats (GitHub, GitLab, Slack,
Stripe, AWS, Google, OpenAI, npm, PyPI, Hugging Face, JWT); libp2p private keys (protobuf `CAESQ...` base64,
`080112...` hex); BIP39-like mnemonics in quotes.

Key blocks (`KeyBlocks`): PEM/OpenSSH/PGP armour in any case, SSH2 (`---- BEGIN SSH2 ... ----`) and PuTTY
files. A block ends at its END line, or at the first line that cannot be part of it, so a lone BEGIN (an error
message, truncated JSON) costs that line, not the rest of the log. Every line of a block stays a line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from harness.sanitise.gates import GATES

SECRET = "<SECRET>"
PRIVATE_KEY = "<PRIVATE_KEY>"

_PLAIN_WORDS = (
    "password", "passwd", "passphrase", "pass", "pwd", "secret", "token", "seed", "mnemonic", "credential",
    "credentials", "cookie", "auth", "apikey", "keypair", "privkey",
)  # fmt: skip
_QUALIFIERS = (
    "api", "access", "secret", "private", "priv", "identity", "signing", "session", "master", "encryption", "libp2p",
    "node", "ssh", "auth", "client", "app", "license", "webhook",
)  # fmt: skip
# Every name ending that makes a secret name, for one `str.endswith`: the plain words, and `<qualifier>_key`.
_WORD_ENDINGS = _PLAIN_WORDS + tuple(
    f"{q}{sep}{key}" for q in _QUALIFIERS for sep in ("", "_", ".", "-") for key in ("key", "keypair")
)
_AFTER_NAME = re.compile(r"(?P<q>[\"']?)(?:(?P<assign>\s{0,8}[=:]\s{0,8})|(?P<space>\s+)(?=[^\s\-]))")
_NAME_MASK = {i: ("n" if chr(i) in "abcdefghijklmnopqrstuvwxyz0123456789_.-" else " ") for i in range(128)}
_ALNUM_MASK = {i: ("n" if chr(i) in "abcdefghijklmnopqrstuvwxyz0123456789" else " ") for i in range(128)}
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_WORD_HINTS = ("pass", "pwd", "secret", "token", "seed", "mnemonic", "credential", "cookie", "auth", "key")
# Commands whose password is a short option.
COMMAND_PASSWORD = re.compile(
    r"(?:sshpass\b[^|;&\n]{0,200}?\s-p\s*"
    r"|(?:mysql\w*|mariadb\w*)\b[^|;&\n]{0,200}?\s-p(?=\S)"
    r"|redis-cli\b[^|;&\n]{0,200}?\s-a\s+"
    r"|htpasswd\b[^|;&\n]{0,200}?\s-b\S*\s+\S+\s+)"
)
_COMMAND_HINTS = ("sshpass", "mysql", "mariadb", "redis-cli", "htpasswd")
CURL_USER = re.compile(r"(?:-u|--user)\s*(?P<q>[\"']?)(?P<user>[^\s:\"'<]{1,128}):(?P<value>[^\s\"']+)(?P=q)")
URL_PASSWORD = re.compile(r"://(?P<user>[^\s:@/]{1,128}):(?P<value>[^\s@]{0,256}?)@")
AUTHORIZATION = re.compile(
    r"(?i)(?P<name>(?:proxy-)?authorization|x-api-key|x-auth-token|private-token|set-cookie|cookie)"
    r"(?P<sep>[\"']?\s{0,4}[:=]\s{0,4}[\"']?)(?P<scheme>(?:bearer|basic|digest|token|negotiate)\s+)?(?P<value>[^\"'\n]+)"
)
_AUTHORIZATION_HINTS = ("authorization", "cookie", "x-api-key", "x-auth-token", "private-token")
BEARER = re.compile(r"(?i)(?P<scheme>bearer\s+)(?P<value>[A-Za-z0-9._~+/\-]{8,}=*)")
MNEMONIC = re.compile(
    r"(?i)(?:seed|recovery|secret|backup|mnemonic)[ _\-](?:phrase|words)(?:\s+is)?"
    r"(?P<sep>\s{0,4}[:=]\s{0,4})(?P<value>.+)$"
)
QUOTED_MNEMONIC = re.compile(r"[\"'](?:[a-z]{3,8} ){11}[a-z]{3,8}(?:(?: [a-z]{3,8}){3}){0,4}[\"']")
TOKEN_FORMATS = re.compile(
    r"(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_\-]{20,}"
    r"|gl(?:dt|rt|soat|ptt|cbt|imt|agent)-[A-Za-z0-9_\-]{20,}"
    r"|(?:sk|rk|pk|whsec)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,}"
    r"|sk-(?:proj-|ant-|live-)?[A-Za-z0-9_\-]{20,}|(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}|AIza[0-9A-Za-z_\-]{35}"
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}|xapp-[A-Za-z0-9\-]{10,}|npm_[A-Za-z0-9]{30,}|pypi-[A-Za-z0-9_\-]{50,}"
    r"|hf_[A-Za-z0-9]{30,}|dop_v1_[a-f0-9]{64}|SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,})(?![A-Za-z0-9_\-])"
    # libp2p keys: protobuf `KeyType` (0-3) then field 2 (`08 0t 12`), base64 (`CAES...`) or hex (`080112...`).
    r"|CA[AEIM][SI][A-Za-z0-9+/]{40,}={0,2}(?![A-Za-z0-9+/=])"
    r"|080[0-3]12[0-9a-fA-F]{2}[0-9a-fA-F]{60,}(?![0-9A-Za-z])"
)
_TOKEN_LEFT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+/")
_KEPT_VALUES = frozenset(
    {"", "true", "false", "none", "null", "nil", "yes", "no", "***", "<redacted>", "redacted", "-"}
)
_QUOTED = {
    '"': re.compile(r'"(?:[^"\\]|\\.)*+"?'),
    "'": re.compile(r"'[^']*+'?"),
}
_TO_SPACE = re.compile(r"[^\s]*")
# Where an unquoted `name: value` ends: the next field of a record, a closing brace, a comment.
_FIELD_END = re.compile(r",\s*[\"']?[A-Za-z_][\w.\-]{0,64}[\"']?\s*[:=]|\s*[}\]](?=[\s,;}\])]|$)|\s+#|\s*$")
# An unquoted value of a quoted (JSON) name ends at white space, a comma or a closing bracket.
_JSON_VALUE = re.compile(r"[^\s,}\]]*")


def _kept(value: str) -> bool:
    bare = value.strip("\"'")
    if bare.lower() in _KEPT_VALUES:
        return True
    if bare.startswith("<") and bare.endswith(">") and bare[1:-1].replace("_", "").isalnum():
        return True  # a placeholder, or `<redacted>`
    return bare.startswith("$") or bare.startswith("{{") or bare.startswith("%(")  # a variable, not a value


def _value_end(text: str, start: int, colon: bool, json: bool = False) -> int:
    """Where the value starting at text[start] ends."""
    if start >= len(text):
        return start
    quoted = _QUOTED.get(text[start])
    if quoted is not None:
        return quoted.match(text, start).end()  # type: ignore[union-attr]
    if json:
        return _JSON_VALUE.match(text, start).end()  # type: ignore[union-attr]
    if colon:
        found = _FIELD_END.search(text, start)
        return found.start() if found else len(text)
    return _TO_SPACE.match(text, start).end()  # type: ignore[union-attr]


def _replace_value(text: str, start: int, end: int, quote_bare: bool) -> str:
    value = text[start:end]
    if value[:1] in "\"'":
        quote = value[0]
        return quote + SECRET + (quote if len(value) > 1 and value.endswith(quote) else "")
    return f'"{SECRET}"' if quote_bare else SECRET


def name_start(text: str, end: int, limit: int = 128) -> int:
    """Walk left from `end` over name characters (letters, digits, `_`, `.`, `-`), at most `limit`."""
    start = end
    while start > 0 and end - start < limit and text[start - 1] in _NAME_CHARS:
        start -= 1
    return start


def _named(text: str, low: str) -> str:
    """Replace the value after each secret name, reading the value by its quoting. Names are found from the
    secret words in them (`str.find`), then checked: the name ends in a secret word, a separator follows."""
    found: list[tuple[int, int, re.Match[str]]] = []
    names = low.translate(_NAME_MASK)  # name characters -> "n", others -> " ": rfind/find walk in C
    alnum = low.translate(_ALNUM_MASK)
    for hint in _WORD_HINTS:
        at = low.find(hint)
        while at >= 0:
            end = alnum.find(" ", at + len(hint))
            if end < 0:
                end = len(low)
            start_of_name = max(names.rfind(" ", 0, at) + 1, at - 128)
            if low[start_of_name:end].endswith(_WORD_ENDINGS):
                after = _AFTER_NAME.match(low, end)
                if after is not None:
                    found.append((start_of_name, end, after))
            at = low.find(hint, end)
    if not found:
        return text
    found.sort(key=lambda item: item[0])
    out: list[str] = []
    last = 0
    for start_of_name, _end, match in found:
        opening = low[start_of_name - 1] if start_of_name > 0 and low[start_of_name - 1] in "\"'" else ""
        if match.group("space") is not None and not low.startswith("-", start_of_name):
            continue  # only flags take a space-separated value: "the token expired" stays
        if opening and opening != match.group("q"):
            opening = ""
        if start_of_name - len(opening) < last:
            continue
        start = match.end()
        colon = match.group("assign") is not None and ":" in match.group("assign")
        json_name = opening == '"' and colon
        end = _value_end(text, start, colon, json_name)
        if end <= start or _kept(text[start:end]):
            continue
        out.append(text[last:start])
        out.append(_replace_value(text, start, end, json_name and text[start] not in "\"'"))
        last = end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _command_passwords(text: str) -> str:
    out: list[str] = []
    last = 0
    for match in COMMAND_PASSWORD.finditer(text):
        if match.start() < last or (match.start() > 0 and text[match.start() - 1] in _NAME_CHARS):
            continue
        start = match.end()
        end = _value_end(text, start, False)
        if end <= start or _kept(text[start:end]):
            continue
        out += [text[last:start], _replace_value(text, start, end, False)]
        last = end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _tokens(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        start = match.start()
        if start > 0 and text[start - 1] in _TOKEN_LEFT:
            return match.group(0)  # inside a longer token: a peer id, a hash
        return SECRET

    return TOKEN_FORMATS.sub(one, text)


# The gates (`harness.sanitise.gates`): a superset of each pattern below, run as one RE2 set per line.
_G_TOKENS = GATES.add(
    r"gh[pousr]_|github_pat_|gl(?:pat|dt|rt|soat|ptt|cbt|imt|agent)-|_(?:live|test)_|whsec_|sk-"
    r"|A(?:KIA|SIA|GPA|IDA|ROA|Iza)|xox[abposr]-|xapp-|npm_|pypi-|hf_|dop_v1_|SG\.|eyJ|CA[AEIM][SI]|080[0-3]12"
)
_G_URL_PASSWORD = GATES.add(r"://[^\s/@]*:[^\s@]*@")
_G_CURL = GATES.add(r"-u|--user")
_G_AUTHORIZATION = GATES.words(_AUTHORIZATION_HINTS, ignore_case=True)
_G_BEARER = GATES.words(("bearer",), ignore_case=True)
_G_MNEMONIC = GATES.words(("phrase", "words"), ignore_case=True)
_G_QUOTED_MNEMONIC = GATES.add(r"[\"'][a-z]{3,8} [a-z]{3,8} [a-z]{3,8} ")
_G_COMMAND = GATES.words(_COMMAND_HINTS, ignore_case=True)
_G_NAMED = GATES.words(_WORD_HINTS, ignore_case=True)
GATE_IDS = frozenset(range(_G_TOKENS, _G_NAMED + 1))


def scrub(text: str, hits: Iterable[int] | None = None) -> str:
    """Replace every secret of one line (key blocks are `KeyBlocks`' business). `hits`: the line's gates."""
    hits = set(GATES.hits(text) if hits is None else hits)
    if not hits & GATE_IDS:
        return text
    if _G_TOKENS in hits:
        text = _tokens(text)
    if _G_URL_PASSWORD in hits:
        text = URL_PASSWORD.sub(lambda m: f"://<USER>:{SECRET}@" if m.group("value") else m.group(0), text)
    if _G_CURL in hits:
        text = CURL_USER.sub(_curl_user, text)
    if _G_AUTHORIZATION in hits:
        text = _at_hints(text, _lower_same(text), _AUTHORIZATION_HINTS, AUTHORIZATION, _authorization)
    if _G_BEARER in hits:
        text = _at_hints(text, _lower_same(text), ("bearer",), BEARER, _bearer)
    if _G_MNEMONIC in hits:
        text = MNEMONIC.sub(lambda m: m.group(0)[: m.start("value") - m.start()] + SECRET, text)
    if _G_QUOTED_MNEMONIC in hits:
        text = QUOTED_MNEMONIC.sub(lambda m: m.group(0)[0] + SECRET + m.group(0)[-1], text)
    if _G_COMMAND in hits:
        text = _command_passwords(text)
    if _G_NAMED in hits:
        text = _named(text, _lower_same(text))
    return text


def _curl_user(match: re.Match[str]) -> str:
    return f"{match.group(0)[: match.start('user') - match.start()]}<USER>:{SECRET}{match.group('q')}"


def _bearer(match: re.Match[str]) -> str:
    return match.group("scheme") + SECRET if not _kept(match.group("value")) else match.group(0)


def _lower_same(text: str) -> str:
    low = text.lower()
    return low if len(low) == len(text) else "".join(c.lower() if len(c.lower()) == 1 else c for c in text)


def _at_hints(text: str, low: str, hints: tuple[str, ...], pattern: re.Pattern[str], replace) -> str:
    """`pattern.sub(replace)`, trying the pattern only where one of `hints` starts (a literal is found fast;
    the case-insensitive pattern itself would be tried at every position)."""
    starts = sorted({at for hint in hints for at in _find_all(low, hint)})
    out: list[str] = []
    last = 0
    for at in starts:
        if at < last:
            continue
        match = pattern.match(text, at)
        if match is None:
            continue
        out += [text[last:at], replace(match)]
        last = match.end()
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


def _find_all(text: str, needle: str) -> list[int]:
    found = []
    at = text.find(needle)
    while at >= 0:
        found.append(at)
        at = text.find(needle, at + 1)
    return found


def _authorization(match: re.Match[str]) -> str:
    value = match.group("value").rstrip()
    start = match.start()
    if start > 0 and match.string[start - 1] in _NAME_CHARS:
        return match.group(0)
    if _kept(value) or value.startswith(SECRET):
        return match.group(0)
    head = match.group(0)[: match.start("value") - match.start()]
    return head + SECRET + match.group("value")[len(value) :]


# -- key blocks ------------------------------------------------------------------------------------------

KEY_BEGIN = re.compile(
    r"(?i)-{4,5} ?BEGIN (?:[A-Z0-9]+ ){0,4}PRIVATE KEY(?: BLOCK)? ?-{4,5}|PuTTY-User-Key-File-[0-9]+:[^\n]*"
)
KEY_END = re.compile(r"(?i)-{4,5} ?END (?:[A-Z0-9]+ ){0,4}PRIVATE KEY(?: BLOCK)? ?-{4,5}")
# Key material glued to a BEGIN on the same line (a JSON string with `\n` escapes, a flattened env value).
_INLINE_MATERIAL = re.compile(r"(?:(?:(?:\\r)?\\n|[ \t])*+(?:[A-Za-z0-9+/]{8,}+={0,2}|[A-Za-z0-9+/]*+={1,2}))*+")
_CONTENT = re.compile(
    r"\s*(?:[A-Za-z0-9+/]+={0,2}"
    r"|(?i:Proc-Type|DEK-Info|Comment|Subject|Version|Hash|Encryption|Public-Lines|Private-Lines|Private-MAC"
    r"|Private-Hash|Key-Derivation|Argon2-[A-Za-z]+|x-[\w\-]+):.*"
    r")?\s*"
)
# A key line behind a logger's prefix: white space, then a base64 chunk that is plainly one.
_PREFIXED_CONTENT = re.compile(r"(?<=\s)(?:[A-Za-z0-9+/]{16,}={0,2}|[A-Za-z0-9+/]{2,}={1,2})\s*$")
_PUTTY_LAST = re.compile(r"\s*Private-(?:MAC|Hash):")


@dataclass
class _Block:
    putty: bool
    prefixed: bool


class KeyBlocks:
    """The state of private key blocks, one per stream (one per node log), so interleaved logs stay apart."""

    def __init__(self) -> None:
        self._open: dict[str, _Block] = {}

    def active(self, stream: str) -> bool:
        return stream in self._open

    def reset(self, stream: str) -> None:
        self._open.pop(stream, None)

    def line(self, text: str, stream: str) -> tuple[str, bool]:
        """(text with key material replaced, whether it is final). Final means: the whole line was key
        material; the caller sanitises what remains otherwise (a prefix, the rest after an END)."""
        block = self._open.get(stream)
        if block is not None:
            end = KEY_END.search(text)
            if end is not None:
                del self._open[stream]
                before = text[: end.start()]
                keep = "" if _CONTENT.fullmatch(before) else _PREFIXED_CONTENT.sub("", before)
                return keep + PRIVATE_KEY + text[end.end() :], False
            if block.putty and _PUTTY_LAST.match(text):
                del self._open[stream]
                return PRIVATE_KEY, True
            if not text.strip():
                return text, True
            if _CONTENT.fullmatch(text):
                return PRIVATE_KEY, True
            if block.prefixed:
                found = _PREFIXED_CONTENT.search(text)
                if found is not None:
                    return text[: found.start()] + PRIVATE_KEY, False
            del self._open[stream]  # not key material: the block ended without its END line
        if "---" not in text and "PuTTY" not in text and "putty" not in text:
            return text, False
        return self._begin(text, stream), False

    def _begin(self, text: str, stream: str) -> str:
        out: list[str] = []
        position = 0
        while True:
            begin = KEY_BEGIN.search(text, position)
            if begin is None:
                break
            out.append(text[position : begin.start()])
            end = KEY_END.search(text, begin.end())
            if end is not None:  # a whole key on one line
                out.append(PRIVATE_KEY)
                position = end.end()
                continue
            rest = text[begin.end() :]
            putty = begin.group(0).lower().startswith("putty")
            if putty or not rest.strip():
                self._open[stream] = _Block(putty=putty, prefixed=bool(text[: begin.start()].strip()))
                out.append(PRIVATE_KEY)
                position = len(text)
                break
            material = _INLINE_MATERIAL.match(text, begin.end())
            out.append(PRIVATE_KEY)
            position = material.end() if material else begin.end()  # type: ignore[union-attr]
        out.append(text[position:])
        return "".join(out)
