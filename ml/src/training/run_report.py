"""A finished run: its results, the summary table people read, and the JSON scripts read."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ml.src.training.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK
from ml.src.training.pair_result import PairResult


@dataclass
class RunReport:
    run_id: str
    started_at: datetime
    store: str
    results: list[PairResult] = field(default_factory=list)
    finished_at: datetime | None = None
    status: str = "running"
    error: str | None = None
    locked_by: str | None = None  # another run's lease stopped this one before it trained anything
    interrupted: bool = False
    store_io_s: float = 0.0  # time inside store calls (this process), for the I/O share of the run
    warnings: list[str] = field(default_factory=list)  # bookkeeping problems that did not stop the run

    @property
    def counts(self) -> dict[str, int]:
        out = {"succeeded": 0, "failed": 0, "skipped": 0}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    def final_status(self) -> str:
        c = self.counts
        if c["failed"] == 0:
            return "succeeded"
        return "partial" if c["succeeded"] else "failed"

    def exit_code(self) -> int:
        if self.locked_by:
            return EXIT_LOCKED
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if self.counts["failed"] == 0 and self.error is None else EXIT_FAILED

    def to_json(self) -> dict[str, Any]:
        duration = (self.finished_at - self.started_at).total_seconds() if self.finished_at else None
        return {
            "run_id": self.run_id,
            "status": self.status,
            "error": self.error,
            "store": self.store,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_s": round(duration, 3) if duration is not None else None,
            "counts": self.counts,
            "store_io_s": round(self.store_io_s, 3),
            "locked_by": self.locked_by,
            "warnings": list(self.warnings),
            "results": [r.to_json() for r in self.results],
        }


def _pct(value: Any) -> str:
    return f"{100 * value:5.1f}" if isinstance(value, int | float) else "    -"


def summary_table(report: RunReport) -> str:
    """Accuracy never stands alone: balanced accuracy and both baselines sit beside it."""
    header = (
        f"{'symbol':<8} {'tf':<4} {'status':<9} {'train':>5} {'test':>5} {'w_rf':>5} {'w_gb':>5} "
        f"{'ens_acc':>7} {'ens_bal':>7} {'majority':>8} {'persist':>7} {'rf_acc':>6} {'gb_acc':>6} {'secs':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in report.results:
        if r.status != "succeeded" or not r.metrics:
            lines.append(f"{r.symbol:<8} {r.timeframe:<4} {r.status:<9} {r.error or ''}"[: len(header) + 60])
            continue
        m, w = r.metrics, r.weights or {}
        lines.append(
            f"{r.symbol:<8} {r.timeframe:<4} {r.status:<9} {r.n_train or 0:>5} {r.n_test or 0:>5} "
            f"{w.get('rf', 0):>5.2f} {w.get('gb', 0):>5.2f} "
            f"{_pct(m['ensemble']['test_accuracy']):>7} {_pct(m['ensemble']['test_balanced_accuracy']):>7} "
            f"{_pct(m['baseline']['test_accuracy']):>8} {_pct(m['persistence']['test_accuracy']):>7} "
            f"{_pct(m['rf']['test_accuracy']):>6} {_pct(m['gb']['test_accuracy']):>6} {r.duration_s:>6.2f}"
        )
    wf = [r for r in report.results if r.walk_forward and r.walk_forward.get("summary", {}).get("n_folds_ok")]
    for r in wf:
        assert r.walk_forward is not None
        s = r.walk_forward["summary"]
        bal, maj = s["test_balanced_accuracy"], s["majority_test_accuracy"]
        std = f" +/- {100 * bal['std']:.1f}" if bal["std"] is not None else ""
        lines.append(
            f"  walk-forward {r.symbol}/{r.timeframe}: {s['n_folds_ok']}/{s['n_folds']} folds, balanced accuracy "
            f"{100 * bal['mean']:.1f}{std}, majority accuracy {100 * maj['mean']:.1f}"
        )
    c = report.counts
    lines.append("-" * len(header))
    lines.append(
        f"run {report.run_id} {report.status}: {c['succeeded']} succeeded, {c['failed']} failed, "
        f"{c['skipped']} skipped (test-slice percentages; majority = training majority class, "
        f"persist = last known label)"
    )
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
