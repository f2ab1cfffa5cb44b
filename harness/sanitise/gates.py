"""One pass per line that says which of the sanitiser's detailed patterns may match it at all.

Most log lines hold no secret, user or host name, and Python's `re` is slow on a long alternation of words
(it tries every branch at almost every position). Each detailed pattern of `secrets` and `names` registers a
cheap superset of it here (`add`: its words, its literal parts); an RE2 set (`google-re2`'s `re2.Set`) runs
them all as one DFA over the line and returns the indices that matched, so a line costs one pass, whatever
the number of patterns, and only the patterns whose gate matched run. Without the `re2` module every gate is
tried with `re`: slower, never different.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

try:
    import re2 as _engine  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - google-re2 is a dependency; this keeps a broken install working
    _engine = None


class GateSet:
    def __init__(self) -> None:
        self._patterns: list[str] = []
        self._match = None

    def add(self, pattern: str) -> int:
        """Register a gate (an RE2-compatible pattern); its index is what `hits` returns when it matches."""
        if self._match is not None:
            raise RuntimeError("gates are registered at import time, before the first line")
        self._patterns.append(pattern)
        return len(self._patterns) - 1

    def words(self, words: Iterable[str], *, ignore_case: bool = False) -> int:
        alternatives = "|".join(re.escape(word) for word in words)
        return self.add(f"(?i:{alternatives})" if ignore_case else alternatives)

    def hits(self, text: str) -> Iterable[int]:
        if self._match is None:
            self._compile()
        return self._match(text)  # type: ignore[misc]

    def _compile(self) -> None:
        if _engine is not None:
            options = _engine.Options()
            options.never_nl = False
            gates = _engine.Set.SearchSet(options)
            for pattern in self._patterns:
                gates.Add(pattern.encode())
            gates.Compile()
            self._match = lambda text: gates.Match(text.encode("utf-8", "surrogatepass")) or ()  # None: no gate
        else:  # pragma: no cover
            compiled = [re.compile(p, re.MULTILINE) for p in self._patterns]
            self._match = lambda text: [i for i, p in enumerate(compiled) if p.search(text)]


GATES = GateSet()
