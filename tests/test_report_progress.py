"""The HTML report says what it is doing while it draws (10-12 s for the sample pairs used to pass in silence)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.src.cli import report as report_cli

pytestmark = pytest.mark.slow


def test_html_report_prints_a_line_per_pair_before_the_summary(
    trained_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report_cli.main(["--html", str(tmp_path / "site")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("report")]
    assert err[0] == f"report: drawing 2 pair page(s) for {tmp_path / 'site'}"
    assert err[1].startswith("report [1/2] GOOG/d1: page written in ") and err[1].endswith("s")
    assert err[2].startswith("report [2/2] IBM/w1: page written in ")
    assert err[3].startswith(f"report: {tmp_path / 'site' / 'index.html'} (3 pages")
    assert len(err) == 4
