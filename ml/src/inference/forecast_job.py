"""The forecast step: each pair's champion forecasts its latest closed bar, one row per bar in `ml_forecasts`.

    python -m ml.src.inference.forecast_job --all --timeframes d1 w1 --json   (command line: ml.src.cli.forecast)

Exit codes as the training job's: 0 every pair written, unchanged or skipped; 1 a pair failed (or the store);
2 bad usage or settings; 130 interrupted (SIGTERM / Ctrl-C: the pair in progress finishes). There are no leases:
a forecast row is unique per (symbol, timeframe, bar_ts, model version), so two overlapping runs write it once.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from config.settings import Settings
from ml.src.common.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from ml.src.common.stop import stop_requested
from ml.src.data.store import TrainingStore

log = logging.getLogger("ml.inference")


@dataclass
class ForecastRun:
    started_at: datetime
    store: str
    as_of: datetime | None
    results: list[Any] = field(default_factory=list)
    interrupted: bool = False
    finished_at: datetime | None = None

    @property
    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("written", "unchanged", "skipped", "failed")}
        for r in self.results:
            out[r.status] += 1
        return out

    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.counts["failed"] else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "interrupted"
            if self.interrupted
            else "failed"
            if self.counts["failed"]
            else "succeeded",
            "store": self.store,
            "as_of": self.as_of.isoformat() if self.as_of else None,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "counts": self.counts,
            "forecasts": [r.to_json() for r in self.results],
        }


def run_forecasts(
    store: TrainingStore,
    settings: Settings,
    pairs: list[tuple[str, str]],
    *,
    as_of: datetime | None = None,
    now: datetime | None = None,
    explicit: bool = False,
) -> ForecastRun:
    """Forecast every pair in turn; a pair's problem is its own result, and SIGTERM stops between pairs.
    `explicit`: the user named these pairs, so one without bars fails (see forecast_pair)."""
    from ml.src.inference.forecast import forecast_pair

    run = ForecastRun(started_at=datetime.now(UTC), store=store.name, as_of=as_of)
    for i, (symbol, tf) in enumerate(pairs, 1):
        if stop_requested():
            run.interrupted = True
            break
        result = forecast_pair(store, settings, symbol, tf, as_of=as_of, now=now, explicit=explicit)
        run.results.append(result)
        level = logging.WARNING if result.status == "failed" else logging.INFO
        detail = result.reason or f"{result.label} at {result.bar_ts} (model {result.model_version_id})"
        log.log(level, "[%d/%d] %s/%s %s: %s", i, len(pairs), symbol, tf, result.status, detail)
    run.finished_at = datetime.now(UTC)
    return run


RULE_NOTES = {
    "prior_ratio": "label = the class whose probability most exceeds its training share (largest p / sh), "
    "not always the most probable class",
    "argmax": "label* = the most probable class (a model trained before the training-share rule)",
}


def _three(values: dict[str, float] | None) -> str:
    if not values:
        return f"{'-':>6} {'-':>6} {'-':>6}"
    return f"{values['BEARISH']:>6.3f} {values['NEUTRAL']:>6.3f} {values['BULLISH']:>6.3f}"


def table(run: ForecastRun) -> str:
    """One row per pair: the probabilities, beside them the training shares the label rule divides them by."""
    head = (
        f"{'symbol':<8} {'tf':<4} {'status':<9} {'bar_ts':<25} {'label':<8} {'p_bear':>6} {'p_neu':>6} "
        f"{'p_bull':>6} {'sh_bear':>6} {'sh_neu':>6} {'sh_bul':>6} {'model':>6} {'real':>4}  reason"
    )
    lines = [head, "-" * len(head)]
    for r in run.results:
        label = (r.label or "-") + ("*" if r.label_rule == "argmax" else "")
        lines.append(
            f"{r.symbol:<8} {r.timeframe:<4} {r.status:<9} {r.bar_ts or '-':<25} {label:<8} "
            f"{_three(r.probabilities)} {_three(r.training_shares)} "
            f"{r.model_version_id if r.model_version_id is not None else '-':>6} {r.outcomes_realised:>4}  "
            f"{r.reason or ''}"
        )
    for rule in sorted({r.label_rule for r in run.results if r.label_rule}):
        lines.append(RULE_NOTES.get(rule, f"label rule: {rule}"))
    c = run.counts
    lines.append(
        f"{c['written']} written, {c['unchanged']} unchanged, {c['skipped']} skipped, {c['failed']} failed"
        + (" (interrupted)" if run.interrupted else "")
    )
    return "\n".join(lines)


if __name__ == "__main__":
    from ml.src.cli.forecast import main

    sys.exit(main())
