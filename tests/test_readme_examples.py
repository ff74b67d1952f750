"""Doc tests: every `python -m ...` line, Python block and cron line of README.md (and docs/*.md) runs as written
on a fresh embedded store loaded the way `make run` loads it, so the README cannot drift from the code.

A block the test cannot run here (a Supabase stack, a Dask or SLURM cluster) is preceded in the Markdown by
`<!-- doc-test: skip (REASON) -->`; the reason is required and such blocks are counted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIP = re.compile(r"<!--\s*doc-test:\s*skip\s*\((?P<reason>[^)]*)\)\s*-->")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
SHELL_LANGS = {"bash", "sh", "shell", "console"}
PYTHON_M = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:python -m ml\.|swiftbolt-ml )")
CRON_FIELDS = re.compile(r"^(\S+\s+){5}(?P<command>cd .*)$")
MAX_SKIPPED_BLOCKS = 4  # sparing: a skip must be rare and justified


@dataclass(frozen=True)
class Example:
    doc: str
    line: int
    kind: str  # "shell", "python" or "cron"
    text: str
    skip: str | None = None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def _blocks(path: Path) -> Iterator[tuple[int, str, list[str], str | None]]:
    """(first line number, language, lines, skip reason) of every fenced block."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group("lang"):
            i += 1
            continue
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.search(prev)
        reason = skip.group("reason").strip() if skip else None
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        yield start + 1, m.group("lang"), body, reason
        i += 1


def _logical_lines(body: list[str], first: int) -> Iterator[tuple[int, str]]:
    """Shell lines with `\\` continuations joined, trailing comments kept (bash ignores them)."""
    buf, at = "", first
    for k, raw in enumerate(body):
        if not buf:
            at = first + k
        if raw.rstrip().endswith("\\"):
            buf += raw.rstrip()[:-1] + " "
            continue
        yield at, (buf + raw).strip()
        buf = ""


def extract(path: Path) -> list[Example]:
    doc = path.relative_to(REPO).as_posix()
    out: list[Example] = []
    for first, lang, body, skip in _blocks(path):
        if lang in SHELL_LANGS:
            for line, text in _logical_lines(body, first):
                if PYTHON_M.match(text):
                    out.append(Example(doc, line, "shell", text, skip))
        elif lang == "python":
            out.append(Example(doc, first, "python", "\n".join(body), skip))
        elif lang == "cron":
            for k, text in enumerate(body):
                m = CRON_FIELDS.match(text.strip())
                if m and "python -m ml." in text:
                    out.append(Example(doc, first + k, "cron", m.group("command"), skip))
    return out


EXAMPLES = [e for path in DOCS for e in extract(path)]
SKIPPED_BLOCKS = {
    (path.name, first, reason) for path in DOCS for first, _, _, reason in _blocks(path) if reason is not None
}


def _make_run_commands() -> list[str]:
    """The `python -m` lines of the Makefile's `run` recipe, as `make run` runs them."""
    lines = (REPO / "Makefile").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run:"))
    out = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        if "$(BIN)/python -m " in line:
            out.append(line.strip().replace("$(BIN)/python", "python"))
    assert out, "the Makefile's run recipe has no python -m line"
    return out


@dataclass
class Checkout:
    """A working directory that looks like the checkout to a user (ml/, config/, .venv/) with its own store."""

    root: Path
    env: dict[str, str]

    def sh(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="module")
def after_make_run(tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    base = tmp_path_factory.mktemp("readme")
    root = base / "checkout"
    root.mkdir()
    for name in ("ml", "config"):  # the same code, imported from this directory as from the checkout
        (root / name).symlink_to(REPO / name, target_is_directory=True)
    (root / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "SUPABASE_"))}
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "SUPABASE_URL": "",
            "ML_LOCAL_DB": str(base / "store.sqlite3"),
            "ML_MODELS_DIR": str(base / "models"),
            "ML_WORKERS": "1",  # a shared 2-core test machine: one process, same results
        }
    )
    checkout = Checkout(root, env)
    for command in _make_run_commands():
        done = checkout.sh(command)
        assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return checkout


def test_the_docs_have_examples_and_skips_are_rare_and_explained() -> None:
    kinds = [e.kind for e in EXAMPLES]
    # README and docs/: the training, forecast, load_bars and report blocks, the Python blocks, two cron lines
    assert kinds.count("shell") >= 19 and kinds.count("python") >= 3 and kinds.count("cron") == 2, kinds
    assert any(e.doc == "README.md" and e.text.startswith("swiftbolt-ml ") for e in EXAMPLES)
    assert len(SKIPPED_BLOCKS) <= MAX_SKIPPED_BLOCKS, SKIPPED_BLOCKS
    assert all(len(reason) >= 15 for _, _, reason in SKIPPED_BLOCKS), SKIPPED_BLOCKS
    named = " ".join(e.text for e in EXAMPLES if e.skip is None)
    for absent in ("AAPL", "SPY", "QQQ", "^GSPC", "^IXIC"):  # symbols the sample data does not have
        assert absent not in named


def _sane(example: Example, done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    if "--json" in example.text:
        out = json.loads(done.stdout)
        if isinstance(out, list):  # the health report: one object per trained pair
            assert out and all({"symbol", "timeframe", "flags", "verdict"} <= set(row) for row in out), out
        else:
            assert out["status"] in ("succeeded", "skipped"), out["status"]
    elif "ensemble_training_job" in example.text or "swiftbolt-ml train" in example.text:
        assert re.search(r"^run \S+ (succeeded|skipped): \d+ succeeded, 0 failed", done.stdout, re.M), (
            done.stdout
        )
    elif "forecast_job" in example.text or "swiftbolt-ml forecast" in example.text:
        assert re.search(r"\d+ written, \d+ unchanged, \d+ skipped, 0 failed", done.stdout), done.stdout
    elif "load_bars" in example.text:
        assert "GOOG" in done.stdout + done.stderr
    if "--html" in example.text or "--report" in example.text:
        assert "report [1/" in done.stderr and "report: " in done.stderr, done.stderr[-2000:]  # progress
    if "--as-of 2017-01-01 --force" in example.text:  # the README says this one retrains
        assert re.search(r"^GSPC\s+d1\s+succeeded", done.stdout, re.M), done.stdout


# Blocks marked to skip are not collected (under CI a skipped test counts as a failure): their reason in the doc
# is the record, and the first test above bounds how many there are.
@pytest.mark.parametrize(
    "example", [e for e in EXAMPLES if e.kind == "shell" and not e.skip], ids=lambda e: e.id
)
def test_shell_example_runs_as_written(after_make_run: Checkout, example: Example) -> None:
    done = after_make_run.sh(example.text)
    assert done.returncode == 0, f"{example.text}: exit {done.returncode}\n{done.stderr[-3000:]}"
    _sane(example, done)
    for flag in ("--html", "--report"):
        if flag in example.text:
            target = example.text.split(flag)[1].split()[0]
            assert (after_make_run.root / target / "index.html").is_file()


@pytest.mark.parametrize(
    "example", [e for e in EXAMPLES if e.kind == "python" and not e.skip], ids=lambda e: e.id
)
def test_python_example_runs_as_written(after_make_run: Checkout, example: Example) -> None:
    done = subprocess.run(
        [sys.executable, "-c", example.text],
        cwd=after_make_run.root,
        env=after_make_run.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{example.id}: exit {done.returncode}\n{done.stderr[-3000:]}"
    assert done.stdout.strip() and "Traceback" not in done.stderr
    assert not done.stdout.startswith(("failed", "skipped")), done.stdout  # the seed API trained its pair


def test_cron_lines_run_from_the_checkout_and_write_their_log(after_make_run: Checkout) -> None:
    cron = [e for e in EXAMPLES if e.kind == "cron"]
    shutil.rmtree(after_make_run.root / "logs", ignore_errors=True)  # a fresh checkout has no logs/
    for example in cron:
        command = example.text.replace("cd /opt/swiftbolt-ml", f"cd {after_make_run.root}")
        done = after_make_run.sh(command)
        assert done.returncode == 0, f"{example.id}: exit {done.returncode}\n{done.stderr[-3000:]}"
    log = (after_make_run.root / "logs" / "train.log").read_text(encoding="utf-8")
    assert len(re.findall(r"^run \S+ (?:succeeded|skipped): ", log, re.M)) == len(cron), log[-2000:]


def test_reports_folder_is_git_ignored() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(
        ["git", "check-ignore", "-q", "reports/latest/index.html"], cwd=REPO, capture_output=True, check=False
    )
    assert done.returncode == 0, "reports/ (the README's report folder) must be git-ignored"


def test_make_says_what_it_installs_before_the_quiet_pip() -> None:
    """`pip install -q` prints nothing for a minute or two: the recipe must say what is happening first."""
    lines = (REPO / "Makefile").read_text(encoding="utf-8").splitlines()
    quiet = [i for i, line in enumerate(lines) if line.startswith("\t") and "pip install -q" in line]
    assert quiet
    for i in quiet:
        recipe_start = max(j for j in range(i + 1) if not lines[j].startswith("\t"))
        before = lines[recipe_start + 1 : i]
        said = [line for line in before if line.strip().startswith("@echo") and "installing" in line]
        if "--no-deps -e ." in lines[i]:
            continue  # the project itself, a second after the locked packages (announced above it)
        assert said, f"Makefile line {i + 1}: {lines[i].strip()} runs silently"
