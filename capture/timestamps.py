"""Log timestamps (``2024-05-01 12:00:00.123 UTC``) to microseconds since the epoch."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_OFFSET = re.compile(r"([+-])(\d\d):?(\d\d)?")


class TimestampError(ValueError):
    """A log time capture cannot read."""


def _zone(name: str) -> dt.tzinfo:
    if name in ("UTC", "GMT", "Z", "UCT"):
        return dt.UTC
    match = _OFFSET.fullmatch(name)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        minutes = int(match.group(2)) * 60 + int(match.group(3) or 0)
        return dt.timezone(sign * dt.timedelta(minutes=minutes))
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise TimestampError(
            f"time zone abbreviation {name!r} is ambiguous or unknown; "
            "set log_timezone = 'UTC' in postgresql.conf"
        ) from exc


class TimestampParser:
    """Parse log times; caches the second-resolution part, which repeats a lot."""

    __slots__ = ("_seconds",)
    # keys are (``YYYY-MM-DD HH:MM:SS``, zone)

    def __init__(self) -> None:
        self._seconds: dict[tuple[str, str], int] = {}

    def __call__(self, text: str) -> int:
        """``YYYY-MM-DD HH:MM:SS[.fff] ZONE`` to microseconds since the Unix epoch."""
        if text[19:20] == "." and text[23:24] == " ":  # PostgreSQL's usual form
            ms = text[20:23]
            key = (text[:19], text[24:])
            base = self._seconds.get(key)
            if base is not None and ms.isdigit():
                return base + int(ms) * 1000
        head, _, zone = text.partition(" ")[2].partition(" ")
        date = text[:10]
        if "." in head:
            clock, _, frac = head.partition(".")
            micros = int((frac + "000000")[:6]) if frac.isdigit() else -1
        else:
            clock, micros = head, 0
        key = (date + " " + clock, zone)
        base = self._seconds.get(key)
        if base is None:
            base = self._base(key[0], zone, text)
            if len(self._seconds) > 100_000:
                self._seconds.clear()
            self._seconds[key] = base
        if micros < 0:
            raise TimestampError(f"not a log time: {text!r}")
        return base + micros

    @staticmethod
    def _base(clock: str, zone: str, text: str) -> int:
        try:
            naive = dt.datetime.strptime(clock, "%Y-%m-%d %H:%M:%S")
        except ValueError as exc:
            raise TimestampError(f"not a log time: {text!r}") from exc
        aware = naive.replace(tzinfo=_zone(zone or "UTC"))
        return int((aware - _EPOCH).total_seconds()) * 1_000_000


def to_datetime(ts_us: int) -> dt.datetime:
    """Microseconds since the epoch to an aware UTC datetime."""
    return _EPOCH + dt.timedelta(microseconds=ts_us)
