"""Statements on their way into the workload file, counted as they go.

The capture run (capture/pipeline.py) hands each batch of statements the tracker
released, in offset order, to :meth:`BatchTally.add`: it gives each its offset from
the capture's origin (never going back: a statement logged out of order takes the
previous offset, and is counted), its JSON line, and adds it to the counts the
header, the class records and the session spans are made of. One call per statement
batch, a loop over every statement: compiled with the other hot modules
(capture/native.py).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from capture.records import StatementKind
from capture.sessions import OpenStatement


@dataclass(slots=True)
class BatchTally:
    """What the statements written so far add up to."""

    last_offset: int = 0
    """The offset of the latest statement written."""
    reordered: int = 0
    """Statements logged out of order, moved to the previous offset."""
    failed: int = 0
    unparsed: int = 0
    truncated: int = 0
    """Statements whose parameters the log cut short."""
    timed: int = 0
    """Statements with a logged duration."""
    kinds: Counter[StatementKind] = field(default_factory=Counter)
    classes: dict[str, list[Any]] = field(default_factory=dict)
    """Fingerprint to [count, total duration, first SQL text, parsed]."""
    spans: dict[str, list[int]] = field(default_factory=dict)
    """Session to [offset of its first statement, end of its last]."""

    def add(
        self, stmts: list[OpenStatement], origin: int, offsets: list[int], lines: list[str]
    ) -> None:
        """Count ``stmts`` and append their offsets and JSON lines."""
        last = self.last_offset
        classes, spans, kinds = self.classes, self.spans, self.kinds
        for stmt in stmts:
            offset = stmt.start_us - origin
            if offset < last:
                offset = last
                self.reordered += 1
            last = offset
            offsets.append(offset)
            lines.append(stmt.encode(offset))
            kinds[stmt.kind] += 1
            duration = stmt.duration_us
            end = offset if duration is None else offset + duration
            span = spans.get(stmt.session)
            if span is None:
                spans[stmt.session] = [offset, end]
            else:
                span[1] = end
            entry = classes.get(stmt.fingerprint)
            if entry is None:
                classes[stmt.fingerprint] = [1, duration or 0, stmt.sql, stmt.parsed]
            else:
                entry[0] += 1
                if duration:
                    entry[1] += duration
            if stmt.sqlstate is not None:
                self.failed += 1
            if not stmt.parsed:
                self.unparsed += 1
            if stmt.params_truncated:
                self.truncated += 1
            if duration is not None:
                self.timed += 1
        self.last_offset = last
