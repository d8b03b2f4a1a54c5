"""Query classes: ``pglast.fingerprint`` as the key, ``pglast.normalize`` for display.

SQL pglast cannot parse (a syntax error the server also rejected, a statement
cut by the log) still gets a class: a fallback fingerprint over its text with
whitespace collapsed, marked ``parsed=False``. Nothing is dropped.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pglast

FALLBACK_PREFIX = "u"
"""Fallback fingerprints are ``u`` + 16 hex digits: never equal to a pglast one."""


def fallback_fingerprint(sql: str) -> str:
    """A stable class key for SQL pglast cannot parse."""
    collapsed = " ".join(sql.split()).lower()
    return FALLBACK_PREFIX + hashlib.blake2b(collapsed.encode(), digest_size=8).hexdigest()


def fingerprint(sql: str) -> tuple[str, bool]:
    """(fingerprint, parsed) for one SQL text."""
    try:
        return str(pglast.fingerprint(sql)), True
    except Exception:  # pglast raises ParseError, and a few others on odd input
        return fallback_fingerprint(sql), False


def normalized_text(sql: str) -> str:
    """``pglast.normalize`` text (constants become $n); the raw SQL when unparsable."""
    try:
        return str(pglast.normalize(sql))
    except Exception:
        return sql


_LITERALS = re.compile(r"'(?:[^']|'')*'|(?<![\w$.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_DML = re.compile(r"\s*(?:select|insert|update|delete|with|values)\b", re.IGNORECASE)
_UNSAFE = ("\\", "$$", "--", "/*")
_SHAPE = bytes.maketrans(b"123456789", b"000000000")
_ASCII_DIGIT = re.compile(r"[0-9]")
VERIFY = 2
"""A literal-free key is trusted after its fingerprint was confirmed this many times."""


def literal_key(sql: str) -> str | None:
    """``sql`` with its numeric and string literals replaced by ``?``, or None.

    Two DML statements that differ only in literals have the same pglast
    fingerprint (it ignores constant values), so the key can stand in for the
    statement in a cache. Only plain DML is keyed: elsewhere a number can be part
    of the statement's shape (``FETCH 10``), and backslash escapes, dollar quotes
    and comments make literal boundaries hard to see, so those are not keyed.
    """
    if not _DML.match(sql):
        return None
    for marker in _UNSAFE:
        if marker in sql:
            return None
    return _LITERALS.sub("?", sql)


class Fingerprinter:
    """:func:`fingerprint` with caches: by exact text, and by literal-free key.

    The second cache serves the common case of the same statement with other
    constants (simple-protocol clients). Each key is checked against a full
    fingerprint the first :data:`VERIFY` times it is hit; a key that ever
    disagrees is never trusted again.
    """

    __slots__ = ("_exact", "_keys", "_limit", "_shapes", "_trusted", "calls", "unparsed")

    def __init__(self, limit: int = 50_000) -> None:
        self._exact: dict[str, tuple[str, bool]] = {}
        self._keys: dict[str, list[object] | None] = {}
        self._shapes: dict[bytes, str] = {}
        """The text with every ASCII digit made ``0`` to its literal-free key.

        Texts with the same shape differ only in which ASCII digits they hold, and
        :func:`literal_key` treats every ASCII digit alike, so it replaces the same
        spans in both; when no digit is left outside those spans the keys are
        equal. Far cheaper than the regex for the usual numeric-literal DML.
        """
        self._trusted: dict[bytes, tuple[str, bool]] = {}
        """A shape in ``_shapes`` whose key is trusted, to the key's result: the
        usual statement in one lookup. Cleared with any other cache."""
        self._limit = limit
        self.calls = 0
        self.unparsed = 0

    def __call__(self, sql: str) -> tuple[str, bool]:
        hit = self._exact.get(sql)
        if hit is not None:
            return hit
        shape = sql.encode("utf-8", "surrogatepass").translate(_SHAPE)
        hit = self._trusted.get(shape)
        if hit is not None:
            return hit
        key = self._shapes.get(shape)
        shaped = key is not None
        if key is None:
            key = literal_key(sql)
            if key is not None and _ASCII_DIGIT.search(key) is None:
                self._remember(self._shapes, shape, key)
                shaped = True
        if key is None:
            result = self._full(sql)
            self._remember(self._exact, sql, result)
            return result
        entry = self._keys.get(key, ())
        if entry is None:  # known unsafe key
            return self._full(sql)
        if entry:
            assert isinstance(entry, list)
            if int(entry[2]) >= VERIFY:  # type: ignore[call-overload]
                hit = str(entry[0]), bool(entry[1])
                if shaped:
                    self._remember(self._trusted, shape, hit)
                return hit
            result = self._full(sql)
            if (result[0], result[1]) != (entry[0], entry[1]):
                self._keys[key] = None
            else:
                entry[2] = int(entry[2]) + 1  # type: ignore[call-overload]
            return result
        result = self._full(sql)
        self._remember(self._keys, key, [result[0], result[1], 0] if result[1] else None)
        return result

    def _full(self, sql: str) -> tuple[str, bool]:
        self.calls += 1
        result = fingerprint(sql)
        if not result[1]:
            self.unparsed += 1
        return result

    def _remember(self, cache: dict[Any, Any], key: object, value: object) -> None:
        if len(cache) >= self._limit:
            cache.clear()
            self._trusted.clear()
        cache[key] = value
