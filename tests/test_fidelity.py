"""One fidelity judgement: the replay report and compare give the same verdict on a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgtraffic.compare.core import run_summary
from pgtraffic.compare.load import load_run
from pgtraffic.compare.model import Thresholds
from replay.fidelity import FidelityVerdict
from replay.report import build_report
from replay.results import (
    ResultsWriter,
    append_final_summary,
    create_results_file,
    read_results,
)

SESSIONS = 4
PER_SESSION = 300
GAP_US = 20_000


def _write_run(
    path: Path,
    *,
    late_us: int = 0,
    service_us: int = 500,
    not_sent_late_us: int = 0,
    max_speed: bool = False,
    sync_wait_us: int = 0,
) -> None:
    """Sessions of evenly spaced statements: ``late_us`` added to every send by the
    replayer, ``service_us`` per statement (above GAP_US: the target falls behind), and
    one not-sent statement (SQLSTATE 08003) per session, ``not_sent_late_us`` late;
    ``sync_wait_us`` of the replayer's lateness spent waiting for other sessions' commits."""
    create_results_file(path, {"workload_id": "w", "max_speed": max_speed, "speed": 1.0})
    writer = ResultsWriter(path)
    for s in range(SESSIONS):
        free_at = 0
        for i in range(PER_SESSION):
            intended = i * GAP_US + s * 1000
            start = max(intended, free_at) + late_us
            writer.add(
                f"s{s}",
                i,
                f"fp{i % 3}",
                intended,
                start,
                service_us,
                1,
                None,
                None,
                sync_wait_us=min(sync_wait_us, late_us),
            )
            free_at = start + service_us
        last = PER_SESSION * GAP_US
        writer.add(f"s{s}", PER_SESSION, "fp0", last, last + not_sent_late_us, 0, -1, "08003", None)
    writer.write_summary({"worker": 0, "sessions": SESSIONS})
    writer.close()
    append_final_summary(path, {"completed": True, "run_time_us": PER_SESSION * GAP_US})


@pytest.mark.parametrize(
    ("run", "verdict"),
    [
        ({}, FidelityVerdict.ON_SCHEDULE),
        ({"late_us": 30_000}, FidelityVerdict.REPLAYER_BEHIND),
        ({"service_us": 25_000}, FidelityVerdict.TARGET_BEHIND),
        ({"late_us": 30_000, "max_speed": True}, FidelityVerdict.MAX_SPEED),
        ({"not_sent_late_us": 5_000_000}, FidelityVerdict.ON_SCHEDULE),
        ({"late_us": 15_000}, FidelityVerdict.REPLAYER_BEHIND),
        ({"late_us": 15_000, "sync_wait_us": 15_000}, FidelityVerdict.ON_SCHEDULE),
    ],
    ids=[
        "on-schedule",
        "replayer-behind",
        "target-behind",
        "max-speed",
        "not-sent-ignored",
        "late-without-sync-waits",
        "as-late-in-sync-waits",
    ],
)
def test_report_and_compare_agree(
    tmp_path: Path, run: dict[str, int | bool], verdict: FidelityVerdict
) -> None:
    path = tmp_path / "r.pgtr"
    _write_run(path, **run)  # type: ignore[arg-type]
    report = build_report(read_results(path))
    summary = run_summary(load_run(path), Thresholds())
    assert report.fidelity is summary.fidelity is verdict
    assert summary.faithful == (verdict is not FidelityVerdict.REPLAYER_BEHIND)
    behind = verdict in (FidelityVerdict.REPLAYER_BEHIND, FidelityVerdict.TARGET_BEHIND)
    assert any(w == summary.fidelity_note for w in report.warnings) == behind
    if verdict is FidelityVerdict.REPLAYER_BEHIND:
        assert "--speed" in summary.fidelity_note and "--workers" in summary.fidelity_note
