"""Query classes: ``pglast.fingerprint`` as the key, ``pglast.normalize`` for display.

SQL pglast cannot parse (a syntax error the server also rejected, a statement
cut by the log) still gets a class: a fallback fingerprint over its text with
whitespace collapsed, marked ``parsed=False``. Nothing is dropped.
"""

from __future__ import annotations

import hashlib

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


class Fingerprinter:
    """:func:`fingerprint` with a bounded cache (prepared statements repeat their text)."""

    __slots__ = ("_cache", "_limit", "calls", "unparsed")

    def __init__(self, limit: int = 50_000) -> None:
        self._cache: dict[str, tuple[str, bool]] = {}
        self._limit = limit
        self.calls = 0
        self.unparsed = 0

    def __call__(self, sql: str) -> tuple[str, bool]:
        hit = self._cache.get(sql)
        if hit is not None:
            return hit
        self.calls += 1
        result = fingerprint(sql)
        if not result[1]:
            self.unparsed += 1
        if len(self._cache) >= self._limit:
            self._cache.clear()
        self._cache[sql] = result
        return result
