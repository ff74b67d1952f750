"""The report's tables: the numbers of a run beside its baselines, the replay's record beside the live record,
and the table of numbers under every chart (its text alternative)."""

from __future__ import annotations

from typing import Any

from ml.src.monitoring import charts
from ml.src.monitoring.html_parts import PairData, esc, fmt, majority_of


def cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f'<td class="num">{"n/a" if value is None else esc(value)}</td>'
    if isinstance(value, int):
        return f'<td class="num">{value}</td>'
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    return f"<td>{esc(value)}</td>"


def chart_table_html(key: str, table: charts.ChartTable) -> str:
    """The chart's numbers as a table (4 decimals): its text alternative, and what the tests read."""
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in table.columns)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in table.rows)
    return (
        f"<details><summary>the numbers plotted ({len(table.rows)} rows)</summary>"
        f'<table class="chart-data" data-chart="{esc(key)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></details>"
    )


def numbers_table(pair: PairData, result: dict[str, Any]) -> str:
    m = result.get("metrics") or {}
    ens, base, pers = m.get("ensemble") or {}, majority_of(m), m.get("persistence") or {}
    prior, ic = m.get("prior") or {}, m.get("ic") or {}
    trading = m.get("trading") or {}
    net = (trading.get("net") or {}).get("sharpe")
    hold = ((trading.get("buy_and_hold") or {}).get("net") or {}).get("sharpe")
    live = pair.live

    def beside_baselines(key: str) -> tuple[str, str, str]:
        # the same score of both class baselines, never a different metric
        label = key.replace("_", " ")
        return label, fmt(ens.get(key)), f"majority {fmt(base.get(key))}, persistence {fmt(pers.get(key))}"

    rows = [
        beside_baselines("test_balanced_accuracy"),
        beside_baselines("valid_balanced_accuracy"),
        beside_baselines("test_accuracy"),
        (
            "test log loss",
            fmt(ens.get("test_log_loss")),
            f"prior (class mix of train) {fmt(prior.get('test_log_loss'))}; lower is better",
        ),
        (
            "test IC",
            fmt(ic.get("test")),
            f"block-permutation p {fmt(ic.get('test_pvalue'))}; 0 = no rank information",
        ),
        ("net Sharpe (test)", fmt(net), f"buy and hold {fmt(hold)}"),
        (
            "live balanced accuracy",
            fmt(live.get("balanced_accuracy")),
            f"{live.get('n_realised', 0)} realised of {live.get('n_forecasts', 0)}; chance "
            f"{fmt(live.get('chance_balanced_accuracy'))}, persistence {fmt(live.get('persistence_balanced_accuracy'))}",
        ),
        (
            "live hit rate / IC",
            f"{fmt(live.get('hit_rate'))} / {fmt(live.get('ic'))}",
            f"{live.get('n_directional', 0)} directional calls on rows that moved",
        ),
    ]
    body = "".join(
        f'<tr><th>{esc(a)}</th><td class="num">{esc(b)}</td><td>{esc(c)}</td></tr>' for a, b, c in rows
    )
    return f"<table><tr><th>measure</th><th>model</th><th>beside</th></tr>{body}</table>"


def replay_record_table(pair: PairData) -> str:
    """The replay's record beside the live record and the validation score of the run shown (the champion's)."""
    row = pair.replay or {}
    rec = row.get("record") or {}
    verdict = rec.get("verdict") or {}
    live = pair.live
    m = pair.result.get("metrics") or {}
    ens, pers = m.get("ensemble") or {}, m.get("persistence") or {}
    rows: list[list[Any]] = [
        ["realised rows", row.get("n_realised"), live.get("n_realised", 0), pair.result.get("n_valid")],
        [
            "balanced accuracy",
            rec.get("balanced_accuracy"),
            live.get("balanced_accuracy"),
            ens.get("valid_balanced_accuracy"),
        ],
        [
            "persistence balanced accuracy",
            rec.get("persistence_balanced_accuracy"),
            live.get("persistence_balanced_accuracy"),
            pers.get("valid_balanced_accuracy"),
        ],
        ["majority balanced accuracy", rec.get("majority_balanced_accuracy"), None, None],
        ["hit rate", rec.get("hit_rate"), live.get("hit_rate"), None],
        ["IC", rec.get("ic"), live.get("ic"), None],
        ["IC p-value", rec.get("ic_p_value"), None, None],
        ["log loss", rec.get("log_loss"), None, ens.get("valid_log_loss")],
        ["prior log loss", rec.get("prior_log_loss"), None, None],
        ["net Sharpe of the calls", rec.get("net_sharpe"), None, None],
        ["buy-and-hold net Sharpe", rec.get("buy_and_hold_net_sharpe"), None, None],
        ["verdict p-value", verdict.get("p_value"), None, None],
        ["verdict q-value (across the replay's pairs)", verdict.get("q_value"), None, None],
    ]
    table = charts.ChartTable(["measure", "replay", "live record", "validation (run shown)"], rows)
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in table.columns)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in table.rows)
    return f'<table class="chart-data" data-chart="replay_record"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
