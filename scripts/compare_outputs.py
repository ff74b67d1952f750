"""Issue 18's "done when": the outputs on the sample data before and after a reorganisation, apart from timings
and ids. Runs the same steps in two checkouts, each its own code, and diffs what a user reads.

For each checkout: a fresh embedded store and models directory in a temporary directory, then
  load_bars ml/sample_data/*.csv, the training job (--all --timeframes d1 w1 --walk-forward 2 --json),
  the forecast job (--all --timeframes d1 w1 --json), the health report (--json) and the HTML report (--html).
Each command runs as `python -m ...` with the checkout as working directory and first on PYTHONPATH, so the
checkout's own modules are imported (the script checks `ml.__file__`), with this interpreter's packages.

Masked before diffing: timings (keys ending in _s / _ms / _seconds, duration, elapsed, cpu, wall, and every
number inside a timings or memory block), ids (run_id, keys ending in _id, uuids, hex tokens, the run token in
artifact names, model-version row ids, host:pid worker names), timestamps of the run itself (ISO times on the day
the script runs), paths (the temporary directory, the checkout) and library versions. The JSON outputs are
flattened to `path -> value` (pairs keyed by SYMBOL/TF) and compared key by key: keys only after (new fields),
keys only before (removed fields) and changed values; the training and forecast tables on stderr cell by cell
(seconds and model ids masked) with the walk-forward lines; the HTML pages line by line (and every number a
changed line showed looked for on the page after); the charts (PNG) by content hash.

    git worktree add /tmp/before 8df0915   # the "before" checkout (result: docs/benchmarks.md, last section)
    python scripts/compare_outputs.py --before /tmp/before --out bench_results/compare
    python scripts/compare_outputs.py --before .          # control: this checkout against itself, no difference
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TIMEFRAMES = ("d1", "w1")

# (name, module, arguments); the output of each is stdout (JSON) except the HTML report (a directory).
STEPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "train",
        "ml.src.training.ensemble_training_job",
        ("--all", "--timeframes", *TIMEFRAMES, "--walk-forward", "2", "--json"),
    ),
    ("forecast", "ml.src.inference.forecast_job", ("--all", "--timeframes", *TIMEFRAMES, "--json")),
    ("report", "ml.src.monitoring.report", ("--json",)),
)

TIMING_KEY = re.compile(r"(_s|_ms|_sec|_seconds)$|duration|elapsed|^cpu|_cpu|wall|timing", re.IGNORECASE)
ID_KEY = re.compile(r"(^|_)(id|ids|uuid|lease|token|holder|host|pid)$", re.IGNORECASE)
TIME_KEY = re.compile(r"(_at|_time|_ts)$|^(now|generated|timestamp)", re.IGNORECASE)
VERSION_KEY = re.compile(r"version|^(python|lightgbm|sklearn|scikit-learn|numpy|pandas|joblib|talib)$", re.I)
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE)
HEX_TOKEN = re.compile(r"\b[0-9a-f]{12,64}\b", re.IGNORECASE)
NUMBER = re.compile(r"(?<![\w#])\d+(?:\.\d+)?(?![\w])")
MODEL_VERSION = re.compile(r"\bversion \d+\b")
MEMORY_KEY = re.compile(r"rss|_mb$|memory", re.IGNORECASE)
HOST_PID = re.compile(r"^[\w.-]+:\d+$")  # a worker's name: host:pid
RUN_FILE = re.compile(r"_\d{8}T?\d{6}Z?_[0-9a-f]{8}\.joblib")  # SYMBOL_TF_<time>_<run>.joblib
DURATION_TEXT = re.compile(r"\b\d+(\.\d+)?\s?(s|ms|sec|seconds|min)\b")


@dataclass
class Checkout:
    """One side of the comparison: its outputs by step name, its HTML pages by relative path."""

    root: Path
    module_file: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)


@dataclass
class StepDiff:
    """The key-by-key difference of one step's masked JSON."""

    step: str
    only_after: list[str]
    only_before: list[str]
    changed: list[tuple[str, Any, Any]]


def _today_pattern() -> re.Pattern[str]:
    today = datetime.now(UTC).date().isoformat()
    return re.compile(rf"{today}[T ][0-9:.]+(Z|[+-]\d\d:?\d\d)?")


def mask_text(text: str, roots: Sequence[Path]) -> str:
    """Paths, today's timestamps, uuids and hex tokens out of free text (HTML pages, JSON strings)."""
    for root in roots:
        text = text.replace(str(root), "<path>")
    text = _today_pattern().sub("<now>", text)
    text = UUID.sub("<uuid>", text)
    text = MODEL_VERSION.sub("version <id>", text)  # a model_versions row id: pairs finish in any order
    return HEX_TOKEN.sub("<hex>", text)


def mask(value: Any, roots: Sequence[Path], key: str = "", timed: bool = False) -> Any:
    """The JSON value with every timing, id, run timestamp, path and library version replaced by a marker.
    `timed`: inside a timing or memory block (`timings: {fit_gb: ...}`), every number is a measurement."""
    if isinstance(value, dict):
        timed = timed or bool(TIMING_KEY.search(key) or MEMORY_KEY.search(key))
        return {HOST_PID.sub("<host:pid>", str(k)): mask(v, roots, str(k), timed) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, roots, key, timed) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if VERSION_KEY.search(key):
        return "<version>"
    if (timed or TIMING_KEY.search(key) or MEMORY_KEY.search(key)) and isinstance(value, int | float):
        return "<timing>"
    if ID_KEY.search(key):
        return "<id>"
    if isinstance(value, str):
        masked = mask_text(value, roots)
        if TIME_KEY.search(key) and masked != value:
            return "<now>"
        if key.endswith(("path", "file", "dir")):
            return RUN_FILE.sub("_<time>_<run>.joblib", masked)
        return masked
    return value


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """`a.b[0].c -> leaf` for every leaf; pairs in lists keyed by symbol/timeframe when they have them."""
    if isinstance(value, dict):
        if not value:
            yield prefix, {}
        for k, v in value.items():
            yield from flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        if not value:
            yield prefix, []
        for i, v in enumerate(value):
            label = str(i)
            if isinstance(v, dict) and "symbol" in v and "timeframe" in v:
                label = f"{v['symbol']}/{v['timeframe']}"
            yield from flatten(v, f"{prefix}[{label}]")
    else:
        yield prefix, value


def generalise(path: str) -> str:
    """A flattened path with pair labels and list indices removed: one line per field, not per pair."""
    path = re.sub(r"^(walk-forward )?[A-Z0-9^.]+/\w+", r"\1<pair>", path)  # a table's SYMBOL/TF row
    return re.sub(r"\[[^\]]*\]", "[]", path)


def run_checkout(root: Path, sample: Sequence[Path], python: str, work: Path) -> Checkout:
    """Every step in a fresh store under `work` (emptied first), with `root`'s own code."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "SUPABASE_"))}
    env.update(
        PYTHONPATH=str(root),
        ML_LOCAL_DB=str(work / "store.sqlite3"),
        ML_MODELS_DIR=str(work / "models"),
        PYTHONHASHSEED="0",
        TZ="UTC",
    )
    out = Checkout(root=root)
    probe = subprocess.run(
        [python, "-c", "import ml; print(ml.__file__)"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    out.module_file = probe.stdout.strip()
    if not out.module_file.startswith(str(root)):
        raise SystemExit(f"{root}: imported {out.module_file}, not this checkout's code")
    load = [python, "-m", "ml.src.data.load_bars", "--quiet", *map(str, sample)]
    subprocess.run(load, cwd=root, env=env, check=True, capture_output=True)
    for name, module, args in STEPS:
        proc = subprocess.run(
            [python, "-m", module, *args], cwd=root, env=env, capture_output=True, text=True
        )
        out.exit_codes[name] = proc.returncode
        (work / f"{name}.stdout.json").write_text(proc.stdout)
        (work / f"{name}.stderr.txt").write_text(proc.stderr)
        if name != "report":
            out.outputs[f"{name} table (stderr)"] = stderr_table(proc.stderr)
        try:
            out.outputs[name] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            out.outputs[name] = {"<not json>": proc.stdout[-2000:], "<stderr>": proc.stderr[-2000:]}
    html = work / "html"
    proc = subprocess.run(
        [python, "-m", "ml.src.monitoring.report", "--html", str(html)],
        cwd=root,
        env=env,
        capture_output=True,
    )
    out.exit_codes["html"] = proc.returncode
    for page in sorted(html.rglob("*")) if html.is_dir() else []:
        if page.is_file() and page.suffix in (".html", ".json", ".csv", ".svg", ".txt"):
            out.pages[str(page.relative_to(html))] = mask_text(page.read_text(errors="replace"), [work, root])
    return out


TABLE_MASK = {"secs", "model"}  # the pair's seconds; a model_versions row id (pairs finish in any order)


def stderr_table(text: str) -> dict[str, dict[str, str]]:
    """The job's table on stderr (header `symbol tf ...`, a dashed line, one row per pair) as
    `SYMBOL/TF -> {column: cell}`, seconds and model ids masked. A cell like `no-skill (wf)` is one cell."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("symbol ") and set(lines[i + 1]) == {"-"}:
            header = line.split()
            rows: dict[str, dict[str, str]] = {}
            for j, row in enumerate(lines[i + 2 :]):
                if not row or row.startswith((" ", "-")):
                    # the training job's walk-forward lines under its table, one per pair
                    for wf in lines[i + 2 + j :]:
                        if m := re.match(r"  walk-forward (\S+) (.*)", wf):
                            rows[f"walk-forward {m[1]}"] = {"line": m[2]}
                    break
                cells = re.sub(r" \((\w+)\)", r"(\1)", row).split()
                cells += [""] * (len(header) - len(cells))
                named = {
                    h: ("<masked>" if h in TABLE_MASK else c) for h, c in zip(header, cells, strict=False)
                }
                rows[f"{named.get('symbol')}/{named.get('tf')}"] = named
            return rows
    return {}


def diff_step(step: str, before: Any, after: Any) -> StepDiff:
    b, a = dict(flatten(before)), dict(flatten(after))
    return StepDiff(
        step=step,
        only_after=sorted(k for k in a if k not in b),
        only_before=sorted(k for k in b if k not in a),
        changed=[(k, b[k], a[k]) for k in sorted(b) if k in a and b[k] != a[k]],
    )


def summarise(diff: StepDiff) -> list[str]:
    """The step's difference as markdown lines: fields (generalised over pairs) new, removed, changed."""
    lines = [f"### {diff.step}", ""]
    for title, keys in (("only after (new)", diff.only_after), ("only before (removed)", diff.only_before)):
        fields = sorted({generalise(k) for k in keys})
        lines.append(f"- {title}: {len(fields)} fields" + ("" if fields else " (none)"))
        lines.extend(f"  - `{f}`" for f in fields)
    by_field: dict[str, list[tuple[str, Any, Any]]] = {}
    for k, b, a in diff.changed:
        by_field.setdefault(generalise(k), []).append((k, b, a))
    lines.append(
        f"- changed values: {len(diff.changed)} in {len(by_field)} fields" + ("" if by_field else " (none)")
    )
    for f, rows in sorted(by_field.items()):
        k, b, a = rows[0]
        lines.append(
            f"  - `{f}` ({len(rows)}x), e.g. `{k}`: `{json.dumps(b)[:80]}` -> `{json.dumps(a)[:80]}`"
        )
    return [*lines, ""]


def page_lines(text: str) -> list[str]:
    """A page's text one tag per line, durations masked, so a diff names the element that changed."""
    return DURATION_TEXT.sub("<dur>", text).replace("><", ">\n<").splitlines()


def diff_pages(before: dict[str, str], after: dict[str, str], out: Path | None) -> list[str]:
    """Pages only on one side, then per page the lines of `before` that `after` no longer has (an existing
    element that changed) and the lines only `after` has (new), each kind once over the pages (digits as #)."""
    lines = ["### html report", ""]
    only_a = sorted(set(after) - set(before))
    only_b = sorted(set(before) - set(after))
    lines.append(f"- pages only after: {only_a or 'none'}; only before: {only_b or 'none'}")
    same, removed, added, full, lost = 0, dict[str, int](), dict[str, int](), [], set[str]()
    common = sorted(set(before) & set(after))
    for name in common:
        b, a = page_lines(before[name]), page_lines(after[name])
        if a == b:
            same += 1
            continue
        delta = list(difflib.unified_diff(b, a, f"before/{name}", f"after/{name}", lineterm="", n=0))
        full += delta
        # a number an existing (changed) line showed that the page after no longer shows anywhere
        after_numbers = set(NUMBER.findall(after[name]))
        for ln in delta:
            if ln.startswith("-") and not ln.startswith("---"):
                lost.update(f"{name}: {n}" for n in NUMBER.findall(ln[1:]) if n not in after_numbers)
        for ln in delta:
            if ln.startswith(("---", "+++")) or ln[:1] not in "+-":
                continue
            kind = re.sub(r"\d", "#", ln[1:])[:160]
            bucket = added if ln.startswith("+") else removed
            bucket[kind] = bucket.get(kind, 0) + 1
    lines.append(f"- pages identical after masking: {same} of {len(common)}")
    for title, bucket in (("lines before only (changed or removed)", removed), ("lines after only", added)):
        lines.append(f"- {title}: {sum(bucket.values())} ({len(bucket)} kinds)")
        lines.extend(f"  - {n}x `{k}`" for k, n in sorted(bucket.items()) if title.startswith("lines before"))
    lines.append(
        f"- numbers in changed lines before that the page after no longer shows: {sorted(lost) or 'none'}"
    )
    if out is not None:
        (out / "html.diff").write_text("\n".join(full) + "\n")
    return [*lines, ""]


def diff_images(before: Path, after: Path) -> list[str]:
    """The report's charts (PNG) by content hash."""

    def hashes(root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png")
        }

    b, a = hashes(before), hashes(after)
    common = sorted(set(a) & set(b))
    differ = [n for n in common if a[n] != b[n]]
    return [
        "### html report charts (PNG)",
        "",
        f"- only after: {sorted(set(a) - set(b)) or 'none'}; only before: {sorted(set(b) - set(a)) or 'none'}",
        f"- identical bytes: {len(common) - len(differ)} of {len(common)}; differ: {differ or 'none'}",
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--before", type=Path, required=True, help="the checkout before (e.g. a git worktree)"
    )
    parser.add_argument("--after", type=Path, default=REPO, help="the checkout after (default: this one)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for both (default: this one)")
    parser.add_argument("--out", type=Path, default=None, help="keep the raw outputs and write diff.md here")
    args = parser.parse_args(argv)
    sample = sorted((REPO / "ml" / "sample_data").glob("*.csv"))
    with tempfile.TemporaryDirectory(prefix="compare_outputs_") as tmp:
        base = args.out.resolve() if args.out else Path(tmp)
        roots = {}
        for side, root in (("before", args.before.resolve()), ("after", args.after.resolve())):
            print(f"running {side}: {root}", file=sys.stderr)
            roots[side] = run_checkout(root, sample, args.python, base / side)
        before, after = roots["before"], roots["after"]
        report = ["# compare_outputs", "", f"- before: `{before.root}` ({before.module_file})"]
        report += [f"- after: `{after.root}` ({after.module_file})"]
        report += [f"- exit codes before {before.exit_codes}, after {after.exit_codes}", ""]
        steps = [name for name, _, _ in STEPS] + ["train table (stderr)", "forecast table (stderr)"]
        for step in steps:
            b = mask(before.outputs[step], [base / "before", before.root])
            a = mask(after.outputs[step], [base / "after", after.root])
            report += summarise(diff_step(step, b, a))
        report += diff_pages(before.pages, after.pages, base if args.out else None)
        report += diff_images(base / "before" / "html", base / "after" / "html")
        text = "\n".join(report)
        if args.out:
            (base / "diff.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
