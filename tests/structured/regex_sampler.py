"""Strings from a regex, for property tests: random ones, and the longest (in chars or bytes).

Walks the tree of Python's `re` parser (the regexes outlines builds parse with it; vLLM checks
the same). Independent of `server.structured.budget` on purpose: the tests compare the two.
"""

from __future__ import annotations

import random
import re
import re._constants as sre_c
import re._parser as sre_p
from typing import Any, Literal

Mode = Literal["random", "max_chars", "max_bytes"]

_PROBES = (
    "a",
    "Z",
    "0",
    "9",
    " ",
    "-",
    ".",
    "_",
    "/",
    "é",
    "ß",
    "€",
    "中",
    "\ufffd",
    "😀",
    "\U0010ffff",
    '"',
    "\\",
    "\n",
    "\t",
)
_CATEGORY_RE = {
    sre_c.CATEGORY_DIGIT: re.compile(r"\d"),
    sre_c.CATEGORY_NOT_DIGIT: re.compile(r"\D"),
    sre_c.CATEGORY_WORD: re.compile(r"\w"),
    sre_c.CATEGORY_NOT_WORD: re.compile(r"\W"),
    sre_c.CATEGORY_SPACE: re.compile(r"\s"),
    sre_c.CATEGORY_NOT_SPACE: re.compile(r"\S"),
}


def _width(text: str) -> tuple[int, int]:
    return len(text), len(text.encode("utf-8"))


class RegexSampler:
    def __init__(self, regex: str, seed: int = 0) -> None:
        self.tree = list(sre_p.parse(regex))
        self.rng = random.Random(seed)

    def sample(self, mode: Mode = "random") -> str:
        return self._seq(self.tree, mode)

    def _seq(self, items: list[Any], mode: Mode) -> str:
        return "".join(self._item(op, av, mode) for op, av in items)

    def _item(self, op: Any, av: Any, mode: Mode) -> str:
        if op is sre_c.LITERAL:
            return chr(av)
        if op is sre_c.NOT_LITERAL:
            return self._pick([c for c in _PROBES if ord(c) != av and c != "\n"], mode)
        if op is sre_c.ANY:
            return self._pick([c for c in _PROBES if c != "\n"], mode)
        if op is sre_c.IN:
            return self._pick(self._members(av), mode)
        if op is sre_c.AT:
            return ""
        if op is sre_c.SUBPATTERN:
            return self._seq(list(av[3]), mode)
        if op is sre_c.BRANCH:
            branches = [list(b) for b in av[1]]
            if mode == "random":
                return self._seq(self.rng.choice(branches), mode)
            return max((self._seq(b, mode) for b in branches), key=lambda s: self._key(s, mode))
        if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT):
            low, high, sub = av
            high = low + 3 if high == sre_c.MAXREPEAT else high
            if mode != "random" or self.rng.random() < 0.4:
                count = high
            else:
                count = self.rng.randint(low, high)
            return "".join(self._seq(list(sub), mode) for _ in range(count))
        raise ValueError(f"sampler does not handle {op}")

    def _members(self, items: list[Any]) -> list[str]:
        candidates = set(_PROBES)
        for op, value in items:
            if op is sre_c.LITERAL:
                candidates.add(chr(value))
            elif op is sre_c.RANGE:
                lo, hi = value
                candidates.update(
                    chr(c) for c in {lo, hi, (lo + hi) // 2} if not 0xD800 <= c <= 0xDFFF
                )
        members = sorted(c for c in candidates if _in_class(items, c))
        if not members:
            raise ValueError(f"empty class {items}")
        return members

    def _pick(self, options: list[str], mode: Mode) -> str:
        if mode == "random":
            return self.rng.choice(options)
        return max(options, key=lambda s: self._key(s, mode))

    @staticmethod
    def _key(text: str, mode: Mode) -> tuple[int, int]:
        chars, nbytes = _width(text)
        return (chars, nbytes) if mode == "max_chars" else (nbytes, chars)


def _in_class(items: list[Any], char: str) -> bool:
    negate = bool(items) and items[0][0] is sre_c.NEGATE
    code = ord(char)
    hit = False
    for op, value in items[1:] if negate else items:
        if op is sre_c.LITERAL:
            hit = hit or code == value
        elif op is sre_c.RANGE:
            hit = hit or value[0] <= code <= value[1]
        elif op is sre_c.CATEGORY:
            hit = hit or bool(_CATEGORY_RE[value].match(char))
    return hit != negate
