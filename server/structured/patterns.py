"""Regexes for JSON string *text* (between the quotes) that outlines compiles cheaply and safely.

outlines puts a schema's `pattern` verbatim between two quotes, so a pattern that can match `"`,
a backslash or a control character yields broken JSON, an alternation `a|b` splits across the
quotes, and `+`/`*` make the language infinite. `transpile_pattern` rewrites a pattern (read with
Python's `re` parser, which vLLM also applies to every regex) into one whose every match is the
JSON text of a string the original pattern matches: characters JSON must escape are emitted as
escapes, unbounded repetition is capped, anchors at the edges are dropped (outlines matches the
whole string anyway), and constructs a DFA cannot express are refused.

Measured: a counted repetition containing the escaped quote `\\"` compiles exponentially in the
count in outlines_core 0.2.14 (12 → 0.7 s, 16 → 6.8 s, 20 → 157 s), and outlines' own
`maxLength` string regex contains it. Bounded strings here therefore never allow `\\"` unless the
user's pattern asks for a quote explicitly.
"""

from __future__ import annotations

import re._constants as sre_c
import re._parser as sre_p
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from server.structured.errors import RefusalReason, SchemaRefusedError

Interval = tuple[int, int]
Charset = Literal["unicode", "ascii"]

_MAX_CP = 0x10FFFF
_UNIVERSE: list[Interval] = [(0, 0xD7FF), (0xE000, _MAX_CP)]
_PRINTABLE_ASCII: list[Interval] = [(0x20, 0x7E)]
# Characters that must not appear raw in the JSON text outlines generates: controls, quote,
# backslash, and (as outlines' own STRING excludes them) C1 controls.
_RAW_FORBIDDEN: list[Interval] = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x9F)]
_SHORT_ESCAPES = {0x22: '"', 0x5C: "\\", 0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t"}
_DIGIT: list[Interval] = [(0x30, 0x39)]
_WORD: list[Interval] = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
# White space both ECMA-262 `\s` and Python's `\s` match.
_SPACE: list[Interval] = [
    (0x09, 0x0D),
    (0x20, 0x20),
    (0xA0, 0xA0),
    (0x1680, 0x1680),
    (0x2000, 0x200A),
    (0x2028, 0x2029),
    (0x202F, 0x202F),
    (0x205F, 0x205F),
    (0x3000, 0x3000),
]
# Line terminators ECMA-262 `.` does not match (Python's `.` excludes only `\n`).
_LINE_TERMINATORS: list[Interval] = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]
_ALLOWED_GLOBAL_FLAGS = sre_c.SRE_FLAG_UNICODE | sre_c.SRE_FLAG_VERBOSE | sre_c.SRE_FLAG_ASCII

# One character of JSON string text, as outlines' STRING_INNER, minus the escaped quote.
STRING_CHAR = {
    "unicode": r'[^"\\\x00-\x1f\x7f-\x9f]',
    "ascii": r"[ !#-\[\]-~]",
}
STRING_ESCAPE = r"\\[\\/bfnrt]"

# Finite regexes for string formats, each a subset of what the format allows; they replace
# outlines' own format regexes, which are unbounded (email, uri, date-time's year) or can
# produce invalid JSON (its `time` allows a backslash followed by any character).
_DATE = r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_HOUR_MINUTE = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]"
_TIME = _HOUR_MINUTE + r":[0-5][0-9](?:\.[0-9]{1,6})?(?:Z|[+-]" + _HOUR_MINUTE + ")"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?"
_HOST = _LABEL + r"(?:\." + _LABEL + r"){0,3}"
_DOMAIN = _LABEL + r"(?:\." + _LABEL + r"){0,2}\.[a-z]{2,8}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_URI = r"https?://" + _DOMAIN + r"(?:/[A-Za-z0-9._~-]{1,32}){0,6}/?"
FORMAT_PATTERNS: dict[str, str] = {
    "date": _DATE,
    "time": _TIME,
    "date-time": _DATE + "T" + _TIME,
    "uuid": r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "email": r"[a-z0-9](?:[a-z0-9._+-]{0,30}[a-z0-9])?@" + _DOMAIN,
    "idn-email": r"[a-z0-9](?:[a-z0-9._+-]{0,30}[a-z0-9])?@" + _DOMAIN,
    "hostname": _HOST,
    "idn-hostname": _HOST,
    "ipv4": rf"{_OCTET}(?:\.{_OCTET}){{3}}",
    "ipv6": r"(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}",
    "uri": _URI,
    "iri": _URI,
    "uri-reference": _URI,
    "iri-reference": _URI,
    "url": _URI,
}


def quantifier(low: int, high: int) -> str:
    """`{low,high}` in its shortest form."""
    if low == high:
        return "" if low == 1 else f"{{{low}}}"
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low},{high}}}"


def string_body(min_length: int, max_length: int, charset: Charset = "unicode") -> str:
    """Regex for the text of a JSON string of `min_length`..`max_length` characters."""
    unit = f"(?:{STRING_CHAR[charset]}|{STRING_ESCAPE})"
    return unit + quantifier(min_length, max_length)


def transpile_pattern(pattern: str, max_repeat: int) -> str:
    """Rewrite a JSON Schema `pattern` into a finite regex over JSON string text.

    Every string the result matches is the JSON encoding (without quotes) of a string that
    `pattern` matches in full. Raises `SchemaRefusedError` for what cannot be rewritten.
    """
    try:
        parsed = sre_p.parse(pattern)
    except (sre_c.error, OverflowError, RecursionError) as exc:
        raise SchemaRefusedError(
            RefusalReason.INVALID_SCHEMA, f"pattern {pattern!r} is not a valid regex: {exc}"
        ) from exc
    if parsed.state.flags & ~_ALLOWED_GLOBAL_FLAGS:
        raise _unsupported(pattern, "inline flags such as (?i), (?m) or (?s)")
    items = _strip_anchors(list(parsed), True, True)
    return "(?:" + _Emitter(pattern, max_repeat).sequence(items) + ")"


def _unsupported(pattern: str, what: str) -> SchemaRefusedError:
    return SchemaRefusedError(
        RefusalReason.UNSUPPORTED,
        f"pattern {pattern!r} uses {what}, which constrained decoding cannot enforce",
    )


def _strip_anchors(items: list[Any], start: bool, end: bool) -> list[Any]:
    """Drop `^`/`$` (and `\\A`/`\\Z`) at the edges of the pattern, inside edge groups too."""
    begin_ops = (sre_c.AT_BEGINNING, sre_c.AT_BEGINNING_STRING)
    end_ops = (sre_c.AT_END, sre_c.AT_END_STRING)
    while start and items and items[0][0] is sre_c.AT and items[0][1] in begin_ops:
        items = items[1:]
    while end and items and items[-1][0] is sre_c.AT and items[-1][1] in end_ops:
        items = items[:-1]
    if not items:
        return items
    out = list(items)
    for index in {0, len(out) - 1}:
        at_start, at_end = start and index == 0, end and index == len(out) - 1
        op, av = out[index]
        if op is sre_c.BRANCH:
            branches = [_strip_anchors(list(b), at_start, at_end) for b in av[1]]
            out[index] = (op, (av[0], branches))
        elif op is sre_c.SUBPATTERN:
            group, add, delete, sub = av
            out[index] = (op, (group, add, delete, _strip_anchors(list(sub), at_start, at_end)))
    return out


class _Emitter:
    def __init__(self, pattern: str, max_repeat: int) -> None:
        self.pattern = pattern
        self.max_repeat = max_repeat

    def sequence(self, items: Iterable[Any]) -> str:
        return "".join(self.item(op, av) for op, av in items)

    def item(self, op: Any, av: Any) -> str:
        if op is sre_c.LITERAL:
            return _emit_set([(av, av)], negated=False)
        if op is sre_c.NOT_LITERAL:
            return self.charset(_subtract(_UNIVERSE, [(av, av)]), negated=True)
        if op is sre_c.ANY:
            return self.charset(_subtract(_UNIVERSE, _LINE_TERMINATORS), negated=True)
        if op is sre_c.IN:
            intervals, negated = _class_intervals(av)
            return self.charset(intervals, negated)
        if op is sre_c.BRANCH:
            return "(?:" + "|".join(self.sequence(branch) for branch in av[1]) + ")"
        if op is sre_c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise _unsupported(self.pattern, "inline flags")
            return "(?:" + self.sequence(sub) + ")"
        if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT):
            low, high, sub = av
            if high == sre_c.MAXREPEAT:
                high = max(low, self.max_repeat)
            if high == 0:
                return ""
            return "(?:" + self.sequence(sub) + ")" + quantifier(low, high)
        if op is sre_c.POSSESSIVE_REPEAT or op is sre_c.ATOMIC_GROUP:
            raise _unsupported(self.pattern, "possessive or atomic matching")
        if op in (sre_c.GROUPREF, sre_c.GROUPREF_EXISTS):
            raise _unsupported(self.pattern, "a backreference")
        if op in (sre_c.ASSERT, sre_c.ASSERT_NOT):
            raise _unsupported(self.pattern, "a lookahead or lookbehind")
        if op is sre_c.AT:
            raise _unsupported(self.pattern, "an anchor or word boundary inside the pattern")
        raise _unsupported(self.pattern, f"the regex construct {op}")

    def charset(self, intervals: list[Interval], negated: bool) -> str:
        text = _emit_set(intervals, negated)
        if not text:
            raise SchemaRefusedError(
                RefusalReason.UNSATISFIABLE,
                f"pattern {self.pattern!r} has a character class that no JSON string character "
                "can match",
            )
        return text


def _class_intervals(av: Sequence[Any]) -> tuple[list[Interval], bool]:
    """Code points of a `[...]` class, and whether it was negated (or holds a negated escape)."""
    negated = bool(av) and av[0][0] is sre_c.NEGATE
    members = av[1:] if negated else av
    intervals: list[Interval] = []
    loose = False  # holds \D, \W or \S: Python and ECMA disagree outside ASCII
    for op, value in members:
        if op is sre_c.LITERAL:
            intervals.append((value, value))
        elif op is sre_c.RANGE:
            intervals.append((value[0], value[1]))
        elif op is sre_c.CATEGORY:
            positive, complemented = _category(value)
            if complemented:
                loose = True
                intervals.extend(_subtract(_PRINTABLE_ASCII, positive))
            else:
                intervals.extend(positive)
        else:
            raise SchemaRefusedError(
                RefusalReason.UNSUPPORTED, f"character class member {op} is not supported"
            )
    intervals = _normalise(intervals)
    if negated:
        universe = _PRINTABLE_ASCII if loose else _UNIVERSE
        return _subtract(universe, intervals), True
    return intervals, loose


def _category(code: Any) -> tuple[list[Interval], bool]:
    table = {
        sre_c.CATEGORY_DIGIT: (_DIGIT, False),
        sre_c.CATEGORY_NOT_DIGIT: (_DIGIT, True),
        sre_c.CATEGORY_WORD: (_WORD, False),
        sre_c.CATEGORY_NOT_WORD: (_WORD, True),
        sre_c.CATEGORY_SPACE: (_SPACE, False),
        sre_c.CATEGORY_NOT_SPACE: (_SPACE, True),
    }
    if code not in table:
        raise SchemaRefusedError(RefusalReason.UNSUPPORTED, f"character category {code}")
    return table[code]


def _emit_set(intervals: list[Interval], negated: bool) -> str:
    """Alternation of raw characters (as a class) and, unless negated, JSON escapes."""
    intervals = _normalise(intervals)
    raw = _subtract(intervals, _RAW_FORBIDDEN)
    escaped = [] if negated else _intersect(intervals, _RAW_FORBIDDEN)
    parts: list[str] = []
    if raw:
        if len(raw) == 1 and raw[0][0] == raw[0][1]:
            parts.append(_regex_char(raw[0][0]))
        else:
            parts.append("[" + "".join(_class_range(lo, hi) for lo, hi in raw) + "]")
    for lo, hi in escaped:
        parts.extend(_json_escape(cp) for cp in range(lo, hi + 1))
    if len(parts) <= 1:
        return "".join(parts)
    return "(?:" + "|".join(parts) + ")"


def _json_escape(cp: int) -> str:
    """Regex matching the JSON escape sequence of a character that cannot appear raw."""
    short = _SHORT_ESCAPES.get(cp)
    if short is not None:
        return r"\\" + ("\\" + short if short in '\\"' else short)
    return r"\\u" + f"{cp:04x}"


def _regex_char(cp: int) -> str:
    char = chr(cp)
    if char.isascii() and char.isalnum():
        return char
    if cp <= 0xFF:
        return f"\\x{cp:02x}"
    if cp <= 0xFFFF:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _class_range(lo: int, hi: int) -> str:
    if lo == hi:
        return _regex_char(lo)
    return f"{_regex_char(lo)}-{_regex_char(hi)}"


def _normalise(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for lo1, hi1 in _normalise(a):
        for lo2, hi2 in _normalise(b):
            lo, hi = max(lo1, lo2), min(hi1, hi2)
            if lo <= hi:
                out.append((lo, hi))
    return _normalise(out)


def _subtract(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    holes = _normalise(b)
    for lo, hi in _normalise(a):
        cursor = lo
        for hlo, hhi in holes:
            if hhi < cursor or hlo > hi:
                continue
            if hlo > cursor:
                out.append((cursor, hlo - 1))
            cursor = max(cursor, hhi + 1)
        if cursor <= hi:
            out.append((cursor, hi))
    return out
