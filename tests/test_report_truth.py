"""The report tells the truth: every chart's table holds the run's own --json numbers, the champion and the latest
run are both shown and labelled, flags never say OK beside a verdict that says otherwise, the folder is readable
by a static server and replaces only a folder a report wrote, and ledger symbols never name a file outside it.

Real bars: GSPC w1 from ml/sample_data (1,045 weekly bars, the job's 400-bar window), trained three times by the
real job (~6 s): a champion without walk-forward, a `--walk-forward 2 --force` run that is not promoted (same
data: too few rows unseen by the champion), and a run that fails (`--as-of` before the first bar).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from ml.src.cli import report as report_cli
from ml.src.cli import train as job_cli
from ml.src.monitoring import charts, report
from ml.src.monitoring.report import assess_pair
from ml.src.monitoring.report_dir import MARKER
from tests.factories import SAMPLE_DATA

pytestmark = pytest.mark.slow

CLASSES = ("BEARISH", "NEUTRAL", "BULLISH")


# ---- reading the pages as a screen reader (or a sceptical quant) does: the figures' tables ------------------------


@dataclass
class Figure:
    key: str
    caption: str = ""
    img: str | None = None
    tables: list[list[list[str]]] = field(default_factory=list)  # rows of cell texts, the header row first


class Figures(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.figures: list[Figure] = []
        self.flags: list[str] = []
        self._fig: Figure | None = None
        self._in: str | None = None
        self._row: list[str] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure":
            self._fig = Figure(key=str(a.get("data-chart")))
        elif self._fig is not None and tag == "img":
            self._fig.img = a.get("src")
        elif self._fig is not None and tag == "figcaption":
            self._in, self._text = "caption", ""
        elif self._fig is not None and tag == "table":
            assert a.get("data-chart") == self._fig.key
            self._fig.tables.append([])
        elif self._fig is not None and tag == "tr":
            self._row = []
        elif self._row is not None and tag in ("td", "th"):
            self._in, self._text = "cell", ""
        elif tag == "span" and "flag" in (a.get("class") or "").split():
            self._in, self._text = "flag", ""

    def handle_data(self, data: str) -> None:
        if self._in is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption" and self._fig is not None:
            self._fig.caption, self._in = self._text.strip(), None
        elif tag in ("td", "th") and self._row is not None:
            self._row.append(self._text.strip())
            self._in = None
        elif tag == "tr" and self._fig is not None and self._row is not None:
            self._fig.tables[-1].append(self._row)
            self._row = None
        elif tag == "figure" and self._fig is not None:
            self.figures.append(self._fig)
            self._fig = None
        elif tag == "span" and self._in == "flag":
            self.flags.append(self._text.strip())
            self._in = None


def read_page(path: Path) -> Figures:
    parser = Figures()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def tables_of(path: Path) -> dict[str, list[list[str]]]:
    """{data-chart key: body rows} of every figure of the page; each figure has a caption, an image, one table."""
    out = {}
    for fig in read_page(path).figures:
        assert fig.caption, f"{path.name}: figure {fig.key} has no caption"
        assert fig.img and fig.img.endswith(f"{fig.key}.png"), (fig.key, fig.img)
        assert len(fig.tables) == 1, f"{path.name}: figure {fig.key} has {len(fig.tables)} tables"
        out[fig.key] = fig.tables[0][1:]
    return out


def num(cell: str) -> float | None:
    return None if cell == "n/a" else float(cell)


def same(cell: str, value: Any) -> bool:
    """A table cell (4 decimals, n/a for nothing) shows this JSON number."""
    if value is None:
        return cell == "n/a"
    return cell != "n/a" and abs(float(cell) - float(value)) <= 5e-5 + 1e-9


def column(rows: list[list[str]], k: int) -> list[str]:
    return [r[k] for r in rows]


# ---- one store trained by the real job, shared by the module --------------------------------------------------------


@dataclass
class Runs:
    root: Path
    champion: dict[str, Any]  # run 1's --json result: the champion, no walk-forward
    challenger: dict[str, Any]  # run 2: --walk-forward 2 --force, not promoted
    failed: dict[str, Any]  # run 3: fails (no bars as of 1990)
    runs: list[dict[str, Any]]  # the three runs' --json
    skipped: dict[str, Any]  # a run between 2 and the forecast with no new bars: the pair skipped
    forecasts: list[dict[str, Any]]  # the forecast job's --json forecasts after run 2
    report_json: list[dict[str, Any]]  # report --json after run 2


def run_json(main: Any, args: list[str]) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    from ml.src.cli import forecast as forecast_job
    from ml.src.data.load_bars import main as load_main

    root = tmp_path_factory.mktemp("truth")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUPABASE_URL", "")
        mp.delenv("SUPABASE_SERVICE_ROLE_KEY", raising=False)
        mp.delenv("SUPABASE_KEY", raising=False)
        mp.setenv("ML_LOCAL_DB", str(root / "store.sqlite3"))
        mp.setenv("ML_MODELS_DIR", str(root / "models"))
        mp.setenv("ML_WORKERS", "1")
        assert load_main(["--quiet", str(SAMPLE_DATA / "GSPC_w1.csv")]) == 0
        pair = ["--pairs", "GSPC:w1", "--json", "-q"]
        c1, j1 = run_json(job_cli.main, [*pair, "--report", str(root / "job1")])
        c2, j2 = run_json(
            job_cli.main, [*pair, "--walk-forward", "2", "--force", "--report", str(root / "job2")]
        )
        assert (c1, c2) == (0, 0)
        c_skip, j_skip = run_json(job_cli.main, [*pair, "--report", str(root / "job_skip")])  # no new bars
        assert c_skip == 0 and j_skip["results"][0]["status"] == "skipped"
        code, fj = run_json(forecast_job.main, ["--pairs", "GSPC:w1", "--json"])
        assert code == 0, fj
        assert report_cli.main(["--html", str(root / "site2")]) == 0
        code, rj = run_json(report_cli.main, ["--json"])
        assert code == 0
        c3, j3 = run_json(
            job_cli.main, [*pair, "--as-of", "1990-01-01", "--force", "--report", str(root / "job3")]
        )
        assert c3 == 1
        assert report_cli.main(["--html", str(root / "site3")]) == 0
        yield Runs(
            root=root,
            champion=j1["results"][0],
            challenger=j2["results"][0],
            failed=j3["results"][0],
            runs=[j1, j2, j3],
            skipped=j_skip,
            forecasts=[f for f in fj["forecasts"] if f["status"] == "written"],
            report_json=rj,
        )


def test_the_scenario_is_what_the_tests_say(runs: Runs) -> None:
    assert runs.champion["promotion"]["decision"] == "champion" and not runs.champion["walk_forward"]
    assert runs.challenger["status"] == "succeeded"
    assert runs.challenger["promotion"]["decision"] == "challenger"  # not promoted
    assert runs.challenger["walk_forward"]["summary"]["n_folds_ok"] == 2
    assert runs.failed["status"] == "failed" and "no bars" in runs.failed["error"]
    assert len(runs.forecasts) == 1


# ---- 17.2: every chart kind's table equals the run's --json -----------------------------------------------------------


def assert_run_tables(tables: dict[str, list[list[str]]], result: dict[str, Any], prefix: str = "") -> None:
    m = result["metrics"]
    eq = m["charts"]["equity"]
    rows = tables[prefix + "equity"]
    assert column(rows, 0) == [str(t) for t in eq["ts"]]
    assert all(same(r[1], v) for r, v in zip(rows, eq["strategy_net"], strict=True))
    assert all(same(r[2], v) for r, v in zip(rows, eq["buy_and_hold_net"], strict=True))

    rows = tables[prefix + "confusion"]
    matrix = m["ensemble"]["test_confusion"]
    assert [r[0] for r in rows] == list(CLASSES)
    assert [[int(c) for c in r[1:4]] for r in rows] == [[int(v) for v in row] for row in matrix]
    assert sum(int(r[4]) for r in rows) == result["n_test"]

    rows = tables[prefix + "importance"]
    top = m["charts"]["feature_importance"]["top"]
    assert column(rows, 0) == [t[0] for t in top]
    assert all(same(r[1], t[1]) for r, t in zip(rows, top, strict=True))

    rows = tables[prefix + "reliability"]
    want = [
        (c, i, p, o, n)
        for c in CLASSES
        for i, (p, o, n) in enumerate(
            zip(
                m["charts"]["reliability"][c]["mean_predicted"],
                m["charts"]["reliability"][c]["observed"],
                m["charts"]["reliability"][c]["count"],
                strict=True,
            )
        )
    ]
    assert len(rows) == len(want) > 0
    for r, (c, i, p, o, n) in zip(rows, want, strict=True):
        assert (r[0], int(r[1]), int(r[4])) == (c, i, n) and same(r[2], p) and same(r[3], o)


def assert_walk_forward_table(rows: list[list[str]], header: list[str], wf: dict[str, Any]) -> None:
    folds = wf["folds"]
    assert len(rows) == len(folds)  # one row per fold
    names = [n for n in ("ensemble", "equal_weight", "rf", "gb", "majority", "persistence", "prior")]
    assert header[3:-1] == names  # a column per model and baseline
    for r, f in zip(rows, folds, strict=True):
        assert int(r[0]) == f["fold"] and r[1] == f["test_start"][:10]
        for k, name in enumerate(names):
            assert same(r[3 + k], f["metrics"][name]["balanced_accuracy"]), (f["fold"], name, r[3 + k])
    # the run has scores, so the chart must show them: a column of zeros (the old chart's keys) fails here
    assert any(num(c) for c in column(rows, 3)), "every ensemble fold score shows as 0 or n/a"


def header_of(page: Path, key: str) -> list[str]:
    return next(f.tables[0][0] for f in read_page(page).figures if f.key == key)


def test_every_chart_table_is_the_runs_own_json(runs: Runs) -> None:
    page = runs.root / "site2" / "pairs" / "GSPC_w1.html"
    tables = tables_of(page)
    assert set(tables) == {
        "equity",
        "confusion",
        "importance",
        "reliability",
        "history",
        "live",
        *(f"latest_{k}" for k in ("equity", "confusion", "walk_forward", "importance", "reliability")),
    }
    assert_run_tables(tables, runs.champion)  # the champion's run: run 1
    assert_run_tables(tables, runs.challenger, "latest_")  # the latest run: run 2, its walk-forward too
    assert_walk_forward_table(
        tables["latest_walk_forward"], header_of(page, "latest_walk_forward"), runs.challenger["walk_forward"]
    )
    # history: one row per succeeded run, its run id and scores
    rows = tables["history"]
    assert column(rows, 2) == [j["run_id"] for j in runs.runs[:2]]
    for r, j in zip(rows, runs.runs[:2], strict=True):
        m = j["results"][0]["metrics"]
        assert same(r[3], m["ensemble"]["test_balanced_accuracy"])
        assert same(r[4], m["majority"]["test_balanced_accuracy"])
        assert same(r[5], m["persistence"]["test_balanced_accuracy"])
    # live: the forecast job's own forecast
    (row,) = tables["live"]
    (f,) = runs.forecasts
    p = f["probabilities"]
    assert row[1] == f["label"] and same(row[2], f["direction_score"])
    assert same(row[2], p["BULLISH"] - p["BEARISH"])
    assert row[0].startswith(f["bar_ts"][:10]) and row[4] == "waiting for its horizon"
    # the job's --report draws the run it just made from the same numbers
    job2 = tables_of(runs.root / "job2" / "pairs" / "GSPC_w1.html")
    assert job2["latest_walk_forward"] == tables["latest_walk_forward"]


def test_walk_forward_chart_draws_the_folds_balanced_accuracy_over_chance(runs: Runs) -> None:
    # The bars themselves, read from the Figure: on the chart code before this change every bar was 0 (it read
    # fold keys folds no longer have) and there was no chance line, so this test failed there.
    wf = runs.challenger["walk_forward"]
    drawn = charts.walk_forward(wf)
    fig = getattr(drawn, "figure", drawn)
    (ax,) = fig.axes
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}
    for name in ("ensemble", "majority", "persistence"):
        want = [f["metrics"][name]["balanced_accuracy"] for f in wf["folds"]]
        assert bars[name] == pytest.approx(want), name
    assert max(bars["ensemble"]) > 0
    chance = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert chance and chance[0].get_ydata()[0] == pytest.approx(1 / 3)
    assert "balanced accuracy" in ax.get_ylabel()


# ---- 17.4: the champion and the latest run, labelled; flags agree with verdicts ---------------------------------------


def page_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_page_shows_the_latest_run_beside_the_champion(runs: Runs) -> None:
    site2 = page_text(runs.root / "site2" / "pairs" / "GSPC_w1.html")
    run2, run3 = runs.runs[1]["run_id"], runs.runs[2]["run_id"]
    assert f"Latest run {run2}" in site2 and "not promoted" in site2
    assert "It ran a walk-forward of 2 folds, which the champion&#x27;s run lacks." in site2
    assert "train with --walk-forward" not in site2  # the latest run had one: never tell the user to do it
    assert f"run {runs.runs[0]['run_id']}" in site2  # the champion's run, labelled as such
    # the job's own --report shows the run it just made (run 2), not only the champion
    assert f"Latest run {run2}" in page_text(runs.root / "job2" / "pairs" / "GSPC_w1.html")
    # a failed latest run: labelled failed with its reason, the champion's numbers still there
    site3 = page_text(runs.root / "site3" / "pairs" / "GSPC_w1.html")
    assert f"Latest run {run3}" in site3 and "failed (GSPC/w1: no bars" in site3
    assert "the champion is unchanged" in site3
    job3 = page_text(runs.root / "job3" / "pairs" / "GSPC_w1.html")
    assert f"Latest run {run3}" in job3 and "failed (" in job3
    assert_run_tables(tables_of(runs.root / "site3" / "pairs" / "GSPC_w1.html"), runs.champion)
    index3 = page_text(runs.root / "site3" / "index.html")
    assert "<td>failed</td>" in index3
    assert "<td>not promoted</td>" in page_text(runs.root / "site2" / "index.html")
    # a run that skipped the pair (no new bars): its own report says so; the store's report ignores skips
    skip = page_text(runs.root / "job_skip" / "pairs" / "GSPC_w1.html")
    assert f"Latest run {runs.skipped['run_id']}" in skip and "skipped (no new bars" in skip
    assert runs.skipped["run_id"] not in site2
    # run 1's own report: the champion is the latest run, one section only
    job1 = page_text(runs.root / "job1" / "pairs" / "GSPC_w1.html")
    assert "It is also the latest run." in job1 and "Latest run," not in job1
    assert "train with --walk-forward K" in job1  # no run of the pair had a walk-forward yet


def test_no_green_ok_beside_a_verdict_or_a_baseline_that_says_otherwise(runs: Runs) -> None:
    (row,) = runs.report_json
    shown = row["shown"]
    if row["verdict"] in ("no-skill", "worse"):
        assert row["verdict"].upper() in shown
    if row["beats_baselines"] is False:
        assert "BELOW-BASELINE" in shown or "DISABLE" in shown
    assert ("OK" in shown) == (
        not row["flags"]
        and row["verdict"] not in ("no-skill", "worse")
        and row["beats_baselines"] is not False
    )
    flags = read_page(runs.root / "site2" / "index.html").flags
    assert flags == shown


def result_row(verdict: str, ensemble: float, majority: float, persistence: float) -> dict[str, Any]:
    """A tiny hand-made ledger row pinning the numbers: one run, promoted, its own test scores."""
    return {
        "symbol": "GSPC",
        "timeframe": "w1",
        "started_at": "2026-12-01T00:00:00+00:00",
        "metrics": {
            "ensemble": {"test_balanced_accuracy": ensemble},
            "majority": {"test_balanced_accuracy": majority},
            "persistence": {"test_balanced_accuracy": persistence},
            "verdict": {"verdict": verdict},
        },
        "promotion": {"decision": "champion", "challenger": ensemble, "baselines": {}},
    }


@pytest.mark.parametrize(
    ("verdict", "scores", "shown"),
    [
        ("no-skill", (0.30, 0.3333, 0.35), ["NO-SKILL", "BELOW-BASELINE"]),  # one run: DISABLE needs 3
        ("worse", (0.25, 0.3333, 0.31), ["WORSE", "BELOW-BASELINE"]),
        ("no-skill", (0.36, 0.3333, 0.34), ["NO-SKILL"]),
        ("skill", (0.45, 0.3333, 0.34), ["OK"]),
    ],
)
def test_shown_flags_follow_the_verdict_and_the_baselines(
    verdict: str, scores: tuple[float, float, float], shown: list[str]
) -> None:
    from datetime import UTC, datetime

    from config.settings import Settings

    champion = {"trained_at": "2026-12-01T00:00:00+00:00"}
    h = assess_pair(
        [result_row(verdict, *scores)], champion, Settings(_env_file=None), datetime(2026, 12, 2, tzinfo=UTC)
    )
    assert h.flags == []  # the RETRAIN / DISABLE / LIVE rule (and the model_health view) is unchanged
    assert h.shown == shown
    assert report.table([h]).splitlines()[2].split()[10] == ",".join(shown)  # after the verdict and its q


def test_the_template_pair_with_a_no_skill_verdict_is_not_ok(trained_store: Path, tmp_path: Path) -> None:
    # IBM w1 of the shared template: verdict no-skill, one run. Before: a green OK.
    assert report_cli.main(["--html", str(tmp_path / "site")]) == 0
    code, rows = run_json(report_cli.main, ["--json"])
    assert code == 0
    ibm = next(r for r in rows if r["symbol"] == "IBM")
    assert ibm["verdict"] == "no-skill" and "OK" not in ibm["shown"]
    index = read_page(tmp_path / "site" / "index.html")
    assert "OK" not in index.flags


# ---- 17.3: readable by a static server; 21.3: replaces only a folder a report wrote ----------------------------------


def modes_under(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_report_folder_is_world_readable_whatever_the_umask(trained_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "www" / "site"
    old = os.umask(0o077)  # the strictest umask: nothing would be readable by another user without the chmod
    try:
        assert report_cli.main(["--html", str(out)]) == 0
        assert report_cli.main(["--html", str(out)]) == 0  # a rebuild is published the same way
    finally:
        os.umask(old)
    modes = modes_under(out)
    dirs = {k for k in modes if (out / k).is_dir()}
    assert {"."} | {"pairs", "pairs/GOOG_d1", "pairs/IBM_w1"} <= dirs
    assert {k: v for k, v in modes.items() if k in dirs} == dict.fromkeys(dirs, 0o755)
    files = {k: v for k, v in modes.items() if k not in dirs}
    assert len(files) == 1 + 3 + 14 and set(files.values()) == {0o644}, files  # marker, pages, charts
    assert MARKER in files
    assert sorted(p.name for p in out.parent.iterdir()) == ["site"]  # atomic: no temporary folder left


def test_report_replaces_only_a_folder_a_report_wrote(
    trained_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "sub" / "data.csv").write_text("a,b\n")
    capsys.readouterr()
    assert report_cli.main(["--html", str(mine)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --html: refusing to replace {mine}"), err
    assert (mine / "notes.txt").read_text() == "my notes\n" and (mine / "sub" / "data.csv").is_file()

    a_file = tmp_path / "report.html"
    a_file.write_text("<p>mine</p>")
    assert report_cli.main(["--html", str(a_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it is a file, not a folder" in err[0], err
    assert a_file.read_text() == "<p>mine</p>"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing hidden under another name

    empty = tmp_path / "empty"
    empty.mkdir()
    assert report_cli.main(["--html", str(empty)]) == 0  # an empty folder is fine, and then it is a report's
    (empty / "stale.txt").write_text("an earlier report's leftover")  # inside a report folder: replaced whole
    assert report_cli.main(["--html", str(empty)]) == 0
    assert (empty / MARKER).is_file() and not (empty / "stale.txt").exists()
    capsys.readouterr()

    # the job checks --report before it trains anything
    runs_before = sqlite3.connect(trained_store).execute("select count(*) from training_runs").fetchone()[0]
    assert job_cli.main(["--pairs", "IBM:w1", "--report", str(mine), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--report: refusing to replace" in err[0], err
    runs_after = sqlite3.connect(trained_store).execute("select count(*) from training_runs").fetchone()[0]
    assert runs_after == runs_before and (mine / "notes.txt").is_file()


# ---- 21.4: a ledger symbol never names a file outside the report ------------------------------------------------------


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_a_hostile_ledger_symbol_never_names_a_file_outside_the_report(
    trained_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another tool wrote rows the store's own writes refuse (its CHECK constraints are switched off for it).
    conn = sqlite3.connect(trained_store)
    with conn:
        conn.execute("pragma ignore_check_constraints = on")
        cols = [r[1] for r in conn.execute("pragma table_info(training_results)") if r[1] != "id"]
        picked = ", ".join("'../../x'" if c == "symbol" else c for c in cols)
        conn.execute(
            f"insert into training_results ({', '.join(cols)}) select {picked} from training_results"
            " where symbol = 'IBM' limit 1"
        )
        fcols = [r[1] for r in conn.execute("pragma table_info(ml_forecasts)") if r[1] != "id"]
        fpicked = ", ".join("'../../y'" if c == "symbol" else c for c in fcols)
        conn.execute(
            f"insert into ml_forecasts ({', '.join(fcols)}) select {fpicked} from ml_forecasts limit 1"
        )
        n_bad = conn.execute("select count(*) from training_results where symbol like '%/%'").fetchone()[0]
    conn.close()
    assert n_bad == 1
    out = tmp_path / "a" / "b" / "site"
    before = files_under(tmp_path)
    capsys.readouterr()
    assert report_cli.main(["--html", str(out)]) == 0
    captured = capsys.readouterr()
    written = files_under(tmp_path) - before
    assert written and all(w == "a" or w.startswith("a/b") for w in written), written
    assert {w for w in written if not w.startswith("a/b/site")} == {"a", "a/b"}, written
    assert sorted(p.name for p in (out / "pairs").glob("*.html")) == ["GOOG_d1.html", "IBM_w1.html"]
    index = (out / "index.html").read_text()
    assert "training_results row" in index and "invalid symbol &#x27;../../x&#x27;" in index
    assert "ml_forecasts row" in index
    assert "invalid symbol '../../x'" in captured.err
    assert "../../x" not in captured.out  # the health table leaves it out too
