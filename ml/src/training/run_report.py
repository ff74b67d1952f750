"""A finished run: its results, the summary table people read, and the JSON scripts read."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ml.src.common.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK
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
    executor: dict[str, Any] = field(default_factory=dict)  # where the fits ran (kind, slots, address)

    def worker_peaks(self) -> dict[str, float]:
        """Peak resident memory (MiB) of each worker process that fitted a pair of this run."""
        peaks: dict[str, float] = {}
        for r in self.results:
            if r.worker:
                wid, mb = str(r.worker["id"]), float(r.worker["peak_rss_mb"])
                peaks[wid] = max(peaks.get(wid, 0.0), mb)
        return peaks

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
            "executor": {**self.executor, "worker_peak_rss_mb": self.worker_peaks()},
            "locked_by": self.locked_by,
            "warnings": list(self.warnings),
            "results": [r.to_json() for r in self.results],
        }


def _pct(value: Any) -> str:
    return f"{100 * value:5.1f}" if isinstance(value, int | float) else "    -"


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def _sharpe(block: dict[str, Any] | None) -> Any:
    return ((block or {}).get("net") or {}).get("sharpe")


def _walk_forward_line(r: PairResult) -> str | None:
    wf = r.walk_forward or {}
    s = wf.get("summary") or {}
    if not s.get("n_folds_ok"):
        return None
    bal = {
        n: s[n]["balanced_accuracy_mean"]
        for n in ("ensemble", "equal_weight", "rf", "gb", "majority", "persistence")
    }
    std = s["ensemble"]["balanced_accuracy_std"]
    pooled = (wf.get("pooled") or {}).get("ensemble") or {}
    return (
        f"  walk-forward {r.symbol}/{r.timeframe} ({s['n_folds_ok']}/{s['n_folds']} folds) balanced accuracy: "
        f"ensemble {_pct(bal['ensemble']).strip()}"
        + (f" +/- {100 * std:.1f}" if std is not None else "")
        + f", equal {_pct(bal['equal_weight']).strip()}, rf {_pct(bal['rf']).strip()}, gb {_pct(bal['gb']).strip()}"
        f" | majority {_pct(bal['majority']).strip()}, persistence {_pct(bal['persistence']).strip()}"
        f"; log loss ensemble {_num(s['ensemble']['log_loss_mean'], '.3f')}, prior {_num(s['prior']['log_loss_mean'], '.3f')}"
        f"; IC {_num(s['ensemble']['ic_mean'], '+.3f')} (pooled p {_num(pooled.get('ic_pvalue'), '.2f')})"
    )


def _pooling_line(r: PairResult) -> str | None:
    """ML_POOLED_MODELS: which model the pair kept, and the paired evidence for it."""
    p = (r.metrics or {}).get("pooling")
    if not p:
        return None
    evidence = ""
    if p.get("difference") is not None:
        se = _num(p.get("std_error"), ".4f")
        evidence = (
            f": pooled - local {p['difference']:+.4f} (s.e. {se}, {p.get('n_rows')} rows)"
            f"; log loss local {_num(p['log_loss'].get('local'), '.3f')}, pooled "
            f"{_num(p['log_loss'].get('pooled'), '.3f')}, prior {_num(p['log_loss'].get('prior'), '.3f')}"
        )
    else:
        evidence = f": {p.get('reason')}"
    return f"  pooling {r.symbol}/{r.timeframe} kept {p['selected']}{evidence}"


def _fdr_of(report: RunReport) -> str:
    for r in report.results:
        fdr = ((r.metrics or {}).get("verdict") or {}).get("fdr")
        if isinstance(fdr, int | float):
            return f" {fdr:g}"
    return ""


def summary_table(report: RunReport) -> str:
    """Like with like: each model score sits beside the same score of the baselines (test slice), then the
    verdict (on the walk-forward rows when folds ran) and the net Sharpe against buy-and-hold."""
    header = (
        f"{'symbol':<8} {'tf':<4} {'status':<9} {'train':>5} {'test':>5} {'w_rf':>5} {'alpha':>6} "
        f"{'ens_bal':>7} {'maj_bal':>7} {'per_bal':>7} {'ens_ll':>6} {'pri_ll':>6} {'ic':>6} {'ic_p':>5} "
        f"{'sharpe':>6} {'sh_thr':>6} {'sh_bh':>6} {'verdict':<17} {'p':>5} {'q':>5} {'secs':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in report.results:
        if r.status != "succeeded" or not r.metrics:
            lines.append(f"{r.symbol:<8} {r.timeframe:<4} {r.status:<9} {r.error or ''}"[: len(header) + 60])
            continue
        m, w = r.metrics, r.weights or {}
        comb = m.get("combination") or {}
        alpha = "equal" if comb.get("equal_weights") else _num(comb.get("alpha"), "g")
        trading = m.get("trading") or {}
        verdict = m.get("verdict") or {}
        basis = {"walk_forward": "wf", "test": "test", "replay": "replay"}.get(verdict.get("basis", ""), "")
        lines.append(
            f"{r.symbol:<8} {r.timeframe:<4} {r.status:<9} {r.n_train or 0:>5} {r.n_test or 0:>5} "
            f"{w.get('rf', 0):>5.2f} {alpha:>6} "
            f"{_pct(m['ensemble']['test_balanced_accuracy']):>7} {_pct(m['majority']['test_balanced_accuracy']):>7} "
            f"{_pct(m['persistence']['test_balanced_accuracy']):>7} "
            f"{_num(m['ensemble']['test_log_loss'], '.3f'):>6} {_num(m['prior']['test_log_loss'], '.3f'):>6} "
            f"{_num(m['ensemble'].get('test_ic'), '+.3f'):>6} {_num(m['ensemble'].get('test_ic_pvalue'), '.2f'):>5} "
            f"{_num(_sharpe(trading), '+.2f'):>6} {_num(_sharpe(trading.get('confidence')), '+.2f'):>6} "
            f"{_num(_sharpe(trading.get('buy_and_hold')), '+.2f'):>6} "
            f"{(verdict.get('verdict', '-') + (f' ({basis})' if basis else '')):<17} "
            f"{_num(verdict.get('p_value'), '.3f'):>5} {_num(verdict.get('q_value'), '.3f'):>5} {r.duration_s:>6.2f}"
        )
    for r in report.results:
        for line in (_walk_forward_line(r), _pooling_line(r)):
            if line:
                lines.append(line)
    c = report.counts
    lines.append("-" * len(header))
    lines.append(
        f"run {report.run_id} {report.status}: {c['succeeded']} succeeded, {c['failed']} failed, "
        f"{c['skipped']} skipped. Test-slice balanced accuracy (%) of the ensemble, the training majority class "
        "and persistence (last known label); log loss of the ensemble and of the training class mix (prior); "
        "IC with its block-permutation p-value; net Sharpe of the calls, with the valid-fitted confidence "
        "threshold, and of buy-and-hold; verdict skill / no-skill / worse with its one-sided p-value and its "
        f"Benjamini-Hochberg q-value across the run's succeeded pairs (skill needs q <= the FDR"
        f"{_fdr_of(report)}; docs/validation.md)"
    )
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
