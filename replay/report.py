"""The closing report of one replay: pure statistics over a loaded results file."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from capture.fields import field_dict
from replay.fidelity import Fidelity, FidelityVerdict, judge_records, replayer_lag_us
from replay.results import Results
from replay.sqlstates import NO_CONNECTION
from replay.tied import rows_fallback_note

__all__ = [
    "Divergence",
    "Fidelity",
    "LoginFailure",
    "ReplayReport",
    "build_report",
    "replayer_lag_us",
]

CONNECTION_CLASS = "08"


def _pct(values: npt.NDArray[np.int64], q: float) -> float | None:
    if values.size == 0:
        return None
    return float(np.percentile(values, q)) / 1000.0


@dataclass(frozen=True, slots=True)
class Divergence:
    """How the replay's outcomes differ from the original's, statement by statement."""

    compared: int
    agreed: int
    new_errors: dict[str, int] = field(default_factory=dict)
    """Failed on replay (by replay SQLSTATE) but succeeded originally."""
    resolved_errors: dict[str, int] = field(default_factory=dict)
    """Succeeded on replay but failed originally (by original SQLSTATE)."""
    changed_errors: dict[str, int] = field(default_factory=dict)
    """Failed both times with different SQLSTATEs (``original->replay``)."""

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def to_json(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "agreed": self.agreed,
            "agreement_rate": self.agreement,
            "new_errors": self.new_errors,
            "resolved_errors": self.resolved_errors,
            "changed_errors": self.changed_errors,
        }


@dataclass(frozen=True, slots=True)
class LoginFailure:
    """Connection attempts refused for one login, with the server's own message."""

    user: str
    database: str
    sqlstate: str
    message: str
    """``role "ghost" does not exist``, ``database "shop" does not exist``, ..."""
    attempts: int
    sessions: int
    """Sessions whose first connection failed so."""

    def to_json(self) -> dict[str, Any]:
        return field_dict(self)

    def describe(self) -> str:
        return (
            f"{self.message} ({self.sqlstate}, {self.user}@{self.database}): "
            f"{self.sessions} sessions, {self.attempts} attempts"
        )


def login_failures(summaries: tuple[dict[str, Any], ...]) -> tuple[LoginFailure, ...]:
    """The workers' refused logins merged, most sessions first."""
    attempts: Counter[tuple[str, str, str, str]] = Counter()
    sessions: Counter[tuple[str, str, str, str]] = Counter()
    for summary in summaries:
        for f in summary.get("login_failures") or ():
            key = (str(f["user"]), str(f["database"]), str(f["sqlstate"]), str(f["message"]))
            attempts[key] += int(f.get("attempts", 0))
            sessions[key] += int(f.get("sessions", 0))
    out = [LoginFailure(*key, attempts[key], sessions[key]) for key in attempts]
    return tuple(sorted(out, key=lambda f: (-f.sessions, -f.attempts, f.message)))


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """Everything the closing report shows; times in milliseconds."""

    completed: bool
    run_time_s: float | None
    statements: int
    statements_per_s: float | None
    sessions: int
    connections_opened: int
    connect_failures: dict[str, int]
    connections_lost: dict[str, int]
    reconnects: int
    max_speed: bool
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    lag_max_ms: float | None
    replayer_lag_p99_ms: float | None
    """Send minus max(intended, completion of the session's previous statement): the
    delay the replayer itself added, excluding waits behind a slow statement."""
    replayer_lag_max_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    latency_p99_ms: float | None
    response_p99_ms: float | None
    errors: dict[str, int]
    unreplayable: dict[str, int]
    divergence: Divergence
    damaged_bytes: int
    budget_overdrafts: int
    fidelity: FidelityVerdict
    """On schedule, or behind it and why: the judgement compare makes too."""
    warnings: tuple[str, ...] = ()
    sync: str = "none"
    """The sync mode replayed (``--sync``); ``none`` for workloads without sync members."""
    sync_requested: str = "none"
    rows_tied: tuple[str, ...] = ()
    """Why ``--sync rows`` kept commit order (replay/tied.py); empty otherwise."""
    sync_waits: int = 0
    """Statements that waited for other sessions' commits, and how long in all."""
    sync_wait_total_ms: float = 0.0
    sync_timeouts: dict[str, int] = field(default_factory=dict)
    """Waits that reached ``--sync-timeout``, per fingerprint of the waiting statement."""
    sync_cycles_broken: int = 0
    """Waits released because they closed a cycle with a row lock on the target."""
    connect_sync_waits: int = 0
    lag_split_p99_ms: dict[str, float | None] = field(default_factory=dict)
    """Lag p99 by cause: ``sync_wait``, ``behind_previous`` (the session's own slow
    previous statement) and ``replayer`` (its own delay)."""
    lag_split_total_ms: dict[str, float] = field(default_factory=dict)
    """The same causes, summed over all statements."""
    login_failures: tuple[LoginFailure, ...] = ()
    """Refused connections by login and the server's message (who could not log in, why)."""
    read_only: bool = False
    """--read-only: the classes that may write were not sent."""
    read_only_skipped: dict[str, int] = field(default_factory=dict)
    """Statements --read-only did not send, per fingerprint."""

    @property
    def nothing_connected(self) -> bool:
        """Sessions were replayed but not one of them could connect."""
        return self.sessions > 0 and self.connections_opened == 0

    def sync_rows(self) -> list[tuple[str, str]]:
        """The sync lines of the closing report's table (label, value)."""
        if self.sync == "none":
            note = " (the workload has no sync members)" if self.sync_requested != "none" else ""
            return [("sync", f"none{note}")]
        timeouts = sum(self.sync_timeouts.values())
        rows = [
            ("sync", self.sync),
            (
                "sync waits / total / timeouts / cycles broken",
                f"{self.sync_waits} / {self.sync_wait_total_ms:,.0f} ms / {timeouts} / "
                f"{self.sync_cycles_broken}",
            ),
        ]
        if self.lag_split_p99_ms:
            rows.append(
                (
                    "lag p99: sync / behind previous / replayer",
                    " / ".join(
                        "-" if v is None else f"{v:.1f} ms" for v in self.lag_split_p99_ms.values()
                    ),
                )
            )
        return rows

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.to_json() if isinstance(value, Divergence) else value
        out["login_failures"] = [f.to_json() for f in self.login_failures]
        out["warnings"] = list(self.warnings)
        return out


def divergence(results: Results) -> Divergence:
    recs = results.records
    strings = results.strings
    replay_state = recs["sqlstate"]
    original = recs["original_sqlstate"]
    agreed = int(np.count_nonzero(replay_state == original))
    new: Counter[str] = Counter()
    resolved: Counter[str] = Counter()
    changed: Counter[str] = Counter()
    differ = np.nonzero(replay_state != original)[0]
    pairs = Counter(zip(original[differ].tolist(), replay_state[differ].tolist(), strict=True))
    for (orig_id, rep_id), n in pairs.items():
        orig_s, rep_s = strings[orig_id], strings[rep_id]
        if orig_s is None and rep_s is not None:
            new[rep_s] += n
        elif rep_s is None and orig_s is not None:
            resolved[orig_s] += n
        else:
            changed[f"{orig_s}->{rep_s}"] += n
    return Divergence(
        compared=len(recs),
        agreed=agreed,
        new_errors=dict(new.most_common()),
        resolved_errors=dict(resolved.most_common()),
        changed_errors=dict(changed.most_common()),
    )


def lag_split(recs: npt.NDArray[Any]) -> tuple[npt.NDArray[np.int64], ...]:
    """Per statement (in session order): its lag (send minus intended start) as the
    sum of its sync wait, its wait behind the session's own previous statement
    (still running at the intended start), and the replayer's own delay."""
    if recs.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    r = recs[np.lexsort((recs["index"], recs["session"]))]
    intended = r["intended_us"].astype(np.int64)
    start = r["start_us"].astype(np.int64)
    lag = np.maximum(start - intended, 0)
    behind = np.zeros(len(r), dtype=np.int64)
    same = r["session"][1:] == r["session"][:-1]
    prev_end = start[:-1] + r["service_us"][:-1].astype(np.int64)
    behind[1:] = np.where(same, np.maximum(prev_end - intended[1:], 0), 0)
    behind = np.minimum(behind, lag)
    sync = np.minimum(r["sync_wait_us"].astype(np.int64), lag - behind)
    return sync, behind, lag - behind - sync


def _sync_fields(
    summaries: tuple[dict[str, Any], ...], sent: npt.NDArray[Any], max_speed: bool
) -> dict[str, Any]:
    """The report's sync accounting from the workers' summaries and the records."""
    first = summaries[0] if summaries else {}
    parts = dict(zip(("sync_wait", "behind_previous", "replayer"), lag_split(sent), strict=True))
    return {
        "sync": str(first.get("sync", "none")),
        "sync_requested": str(first.get("sync_requested", "none")),
        "rows_tied": tuple(str(t) for t in first.get("rows_tied") or ()),
        "sync_waits": sum(int(s.get("sync_waits", 0)) for s in summaries),
        "sync_wait_total_ms": sum(int(s.get("sync_wait_us", 0)) for s in summaries) / 1000,
        "sync_timeouts": _sum_counter(summaries, "sync_timeouts"),
        "sync_cycles_broken": sum(int(s.get("cycles_broken", 0)) for s in summaries),
        "connect_sync_waits": sum(int(s.get("connect_sync_waits", 0)) for s in summaries),
        "lag_split_p99_ms": {} if max_speed else {k: _pct(v, 99) for k, v in parts.items()},
        "lag_split_total_ms": {}
        if max_speed
        else {k: int(v.sum()) / 1000 for k, v in parts.items()},
    }


def _sync_warnings(fields: dict[str, Any]) -> list[str]:
    out = []
    if fields["sync"] == "none" and fields["sync_requested"] != "none":
        out.append(
            "the workload has no sync members (workload format 1): replayed with --sync none, "
            "sessions independent of each other; capture it again for causal order"
        )
    if fields["sync"] == "commit" and fields["sync_requested"] == "rows":
        tied = fields.get("rows_tied") or ()
        out.append(
            rows_fallback_note(tuple(tied))
            if tied
            else "--sync rows kept commit order: the workload was captured before row keys "
            "(after_rows) were recorded; capture it again to order by row"
        )
    timeouts = sum(fields["sync_timeouts"].values())
    if timeouts:
        out.append(
            f"{timeouts} sync waits reached --sync-timeout and went ahead of the commits they "
            "came after: their outcomes may differ from the original's"
        )
    return out


def _login_warnings(failures: tuple[LoginFailure, ...], opened: int) -> list[str]:
    if not failures:
        return []
    named = "; ".join(f.describe() for f in failures[:5])
    more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
    fix = (
        "use --map-user OLD=NEW / --map-database OLD=NEW to log in as roles and databases "
        "the target has, or create them there"
    )
    if opened == 0:
        return [f"no session could connect: {named}{more}; {fix}"]
    failed = sum(f.sessions for f in failures)
    return [f"{failed} sessions could not log in: {named}{more}; {fix}"]


def _sum_counter(summaries: tuple[dict[str, Any], ...], key: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for summary in summaries:
        total.update(summary.get(key) or {})
    return dict(total.most_common())


def build_report(results: Results) -> ReplayReport:
    """Compute the closing report of a (possibly interrupted) replay."""
    recs = results.records
    strings = results.strings
    final = results.final or {}
    max_speed = bool(results.header.get("max_speed"))
    not_sent = results.string_id(NO_CONNECTION)
    sent = recs if not_sent is None else recs[recs["sqlstate"] != not_sent]
    lag = (sent["start_us"] - sent["intended_us"]).astype(np.int64)
    service = sent["service_us"].astype(np.int64)
    response = (sent["start_us"] + sent["service_us"] - sent["intended_us"]).astype(np.int64)
    errors = Counter(recs["sqlstate"][recs["sqlstate"] != 0].tolist())
    run_us = final.get("run_time_us")
    if run_us is None and len(recs):
        run_us = int((recs["start_us"] + recs["service_us"]).max())
    run_s = run_us / 1e6 if run_us else None
    summaries = results.summaries
    report_warnings: list[str] = []
    if results.final is None:
        report_warnings.append(
            "the replay did not finish (interrupted or killed): figures cover what ran"
        )
    if results.damaged_bytes:
        report_warnings.append(
            f"the file ends inside a chunk ({results.damaged_bytes} bytes ignored): the replay "
            "was killed or the file was cut short; figures cover what it holds"
        )
    lag_p99 = None if max_speed else _pct(lag, 99)
    own_lag = lag_split(sent)[2]  # replayer_lag_us less the sync waits
    fidelity = judge_records(recs, strings, max_speed=max_speed)
    if fidelity.warning is not None:
        report_warnings.append(fidelity.warning)
    overdrafts = sum(int(s.get("budget_overdrafts", 0)) for s in summaries)
    sync_fields = _sync_fields(summaries, sent, max_speed)
    report_warnings += _sync_warnings(sync_fields)
    refused = login_failures(summaries)
    opened = sum(int(s.get("connections_opened", 0)) for s in summaries)
    report_warnings += _login_warnings(refused, opened)
    return ReplayReport(
        completed=bool(final.get("completed")),
        run_time_s=run_s,
        statements=len(recs),
        statements_per_s=len(recs) / run_s if run_s else None,
        sessions=sum(int(s.get("sessions", 0)) for s in summaries),
        connections_opened=opened,
        connect_failures=_sum_counter(summaries, "connect_failures"),
        connections_lost=_sum_counter(summaries, "connections_lost"),
        reconnects=sum(int(s.get("reconnects", 0)) for s in summaries),
        max_speed=max_speed,
        lag_p50_ms=None if max_speed else _pct(lag, 50),
        lag_p99_ms=lag_p99,
        lag_max_ms=None if max_speed or lag.size == 0 else float(lag.max()) / 1000.0,
        replayer_lag_p99_ms=None if max_speed else _pct(own_lag, 99),
        replayer_lag_max_ms=None if max_speed or own_lag.size == 0 else float(own_lag.max()) / 1000,
        latency_p50_ms=_pct(service, 50),
        latency_p95_ms=_pct(service, 95),
        latency_p99_ms=_pct(service, 99),
        response_p99_ms=None if max_speed else _pct(response, 99),
        errors={str(strings[k]): n for k, n in errors.most_common()},
        unreplayable=_sum_counter(summaries, "skipped"),
        divergence=divergence(results),
        damaged_bytes=results.damaged_bytes,
        budget_overdrafts=overdrafts,
        fidelity=fidelity.verdict,
        warnings=tuple(report_warnings),
        login_failures=refused,
        read_only=bool(results.header.get("read_only")),
        read_only_skipped=_sum_counter(summaries, "read_only_skipped"),
        **sync_fields,
    )
