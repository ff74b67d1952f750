"""scripts/ as one house (issue 18 item 5): every script starts (`--help`), none edits sys.path, none imports
another script but the shared helper module, and every script command the docs name exists with its flags."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
SHARED = "bench_common"
PY_SCRIPTS = sorted(SCRIPTS.glob("*.py"))
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "SUPABASE_", "PYTHONPATH"))}


def _help(script: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(script), "--help"],
        cwd=REPO,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{script.name} --help exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    assert "usage:" in proc.stdout, proc.stdout[:500]
    return proc.stdout


def test_scripts_are_found() -> None:
    names = {p.stem for p in PY_SCRIPTS}
    assert {SHARED, "bench", "bench_throughput", "compare_outputs"} <= names
    # merged away: their work lives in bench.py --supabase and bench_common
    assert not names & {"bench_supabase", "bench_pairs", "proc_meter"}


@pytest.mark.parametrize("script", [p for p in PY_SCRIPTS if p.stem != SHARED], ids=lambda p: p.name)
def test_script_help_runs(script: Path) -> None:
    """A fast check that the script and everything it imports still import (from a clean environment, no
    sys.path help: the project is installed editable and scripts/ is the script's own directory)."""
    _help(script)


def _sys_path_edits(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "path"
            and isinstance(node.value, ast.Name)
            and node.value.id == "sys"
        ):
            lines.append(node.lineno)
        # code shipped to a child process as a string counts too
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.search(r"sys\.path\.\w+\(", node.value)
        ):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("script", PY_SCRIPTS, ids=lambda p: p.name)
def test_no_script_edits_sys_path(script: Path) -> None:
    tree = ast.parse(script.read_text(), filename=str(script))
    assert _sys_path_edits(tree) == [], f"{script.name} touches sys.path at lines {_sys_path_edits(tree)}"


def test_the_check_sees_a_sys_path_edit() -> None:
    assert _sys_path_edits(ast.parse("import sys\nsys.path.insert(0, '.')\n")) == [2]
    assert _sys_path_edits(ast.parse("CHILD = '''import sys\nsys.path.insert(0, x)'''\n")) == [1]


@pytest.mark.parametrize("script", PY_SCRIPTS, ids=lambda p: p.name)
def test_scripts_import_only_the_shared_module(script: Path) -> None:
    others = {p.stem for p in PY_SCRIPTS} - {SHARED, script.stem}
    imported = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & others, f"{script.name} imports the script(s) {sorted(imported & others)}"


def test_shared_helpers_are_defined_once() -> None:
    """median, the stack-export parsing and the stack start/stop live in bench_common only."""
    once = ("median", "parse_exports", "start_stack", "start_local_stack", "machine_info", "copy_sqlite")
    for script in PY_SCRIPTS:
        if script.stem == SHARED:
            continue
        defined = {n.name for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, ast.FunctionDef)}
        assert not defined & set(once), f"{script.name} defines its own {sorted(defined & set(once))}"
        assert 'startswith("export ")' not in script.read_text(), (
            f"{script.name} parses the stack exports itself"
        )


def test_parse_exports_reads_the_stack_script_lines() -> None:
    sys.path.insert(0, str(SCRIPTS))
    try:
        from bench_common import median, parse_exports
    finally:
        sys.path.remove(str(SCRIPTS))
    text = "starting...\nexport SUPABASE_URL='http://127.0.0.1:54321'\nexport KEY='a=b'\nnot an export\n"
    assert parse_exports(text) == {"SUPABASE_URL": "http://127.0.0.1:54321", "KEY": "a=b"}
    assert median([3.0, 1.0, 2.0, 10.0]) == 2.5


# `.venv/bin/python scripts/NAME.py --flag ...` as the docs print it (flags up to a comment or a backtick)
DOC_COMMAND = re.compile(r"scripts/(\w+)\.py((?:\s+(?:--[\w-]+|[^\s#`]+))*)")


def _doc_commands() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for doc in DOCS:
        for m in DOC_COMMAND.finditer(doc.read_text()):
            found.setdefault(m.group(1), set()).update(re.findall(r"(?<!\S)--[\w-]+", m.group(2)))
    return found


def test_every_script_command_the_docs_name_exists_with_its_flags() -> None:
    """A merged script must not leave a command in the docs that no longer runs."""
    commands = _doc_commands()
    assert "bench" in commands and "--supabase" in commands["bench"]
    for name, flags in sorted(commands.items()):
        script = SCRIPTS / f"{name}.py"
        assert script.exists(), f"the docs name scripts/{name}.py, which does not exist"
        if flags:
            text = _help(script)
            missing = sorted(f for f in flags if f not in text)
            assert not missing, f"scripts/{name}.py has no {missing} (named in the docs)"
