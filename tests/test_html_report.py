"""The static report: written from what the store records, every page opened in a real headless Chromium."""

from __future__ import annotations

import io
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from ml.src.cli import report as report_cli
from ml.src.cli import train as job_cli
from ml.src.monitoring.html_report import verdict_of, verdict_q_of
from tests.browser import Chromium
from tests.factories import SAMPLE_DATA

pytestmark = pytest.mark.slow

CHART_FILES = {"equity", "confusion", "walk_forward", "importance", "reliability", "history", "live"}


def local_refs(page: Path) -> list[Path]:
    text = page.read_text(encoding="utf-8")
    refs = re.findall(r'(?:href|src)="([^"#:]+)"', text)
    return [(page.parent / r).resolve() for r in refs]


def test_verdict_q_is_read_defensively() -> None:
    assert verdict_q_of({"verdict": {"verdict": "skill", "q_value": 0.0123}}) == "0.012"
    assert verdict_q_of({"verdict": {"verdict": "no-skill", "q_value": None}}) == "-"  # not settled
    assert verdict_q_of({"verdict": "skill"}) == "-" and verdict_q_of(None) == "-"


def test_verdict_is_read_defensively() -> None:
    assert verdict_of({"verdict": "skill"}) == "skill"
    assert verdict_of({"verdict": {"verdict": "worse", "reason": "x"}}) == "worse"
    assert verdict_of({"ensemble": {}}) == "n/a"
    assert verdict_of(None) == "n/a"


def test_report_cli_writes_an_index_and_a_page_of_charts_per_pair(
    trained_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "reports" / "site"
    assert report_cli.main(["--html", str(out)]) == 0
    captured = capsys.readouterr()
    assert "GOOG" in captured.out and re.search(r"report: .*index\.html \(3 pages, 14 charts", captured.err)
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html"))
    assert pages == ["index.html", "pairs/GOOG_d1.html", "pairs/IBM_w1.html"]
    for pair in ("GOOG_d1", "IBM_w1"):
        assert {p.stem for p in (out / "pairs" / pair).glob("*.png")} == CHART_FILES
    for page in out.rglob("*.html"):
        for ref in local_refs(page):
            assert ref.is_file(), f"{page.name} links to a missing {ref}"
    index = (out / "index.html").read_text()
    assert "verdict" in index and ('class="flag flag-' in index)
    # the verdict's q-value beside it (each template pair was trained alone in its run: q = p)
    assert "<th>verdict</th><th>q</th>" in index
    assert len(re.findall(r'<td class="verdict">[a-z-]+</td><td class="num">\d\.\d{3}</td>', index)) == 2
    goog = (out / "pairs" / "GOOG_d1.html").read_text()
    assert "25 realised of 25" in goog  # the template's month of daily forecasts, all past their horizon
    # every score beside its baselines in the same metric: log loss beside the class-mix prior's
    assert re.search(
        r"<th>test log loss</th><td class=\"num\">\d\.\d{3}</td><td>prior \(class mix of train\) \d\.\d{3};",
        goog,
    )
    # a rebuild replaces the report whole: no leftovers beside it
    assert report_cli.main(["--html", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["site"]


def test_training_job_report_flag(ml_env: Path, tmp_path: Path) -> None:
    from ml.src.data.load_bars import main as load_main

    assert load_main(["--quiet", str(SAMPLE_DATA / "GSPC_w1.csv")]) == 0
    out = tmp_path / "run-report"
    assert job_cli.main(["--symbols", "GSPC", "--timeframes", "w1", "--report", str(out), "-q"]) == 0
    assert (out / "pairs" / "GSPC_w1.html").is_file()
    assert {p.stem for p in (out / "pairs" / "GSPC_w1").glob("*.png")} >= {"equity", "confusion", "history"}


def test_every_page_opens_in_headless_chromium_and_shows_its_charts(
    trained_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "site"
    t0 = time.perf_counter()
    assert report_cli.main(["--html", str(out)]) == 0
    build_s = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"report: {len(list(out.rglob('*.html')))} pages, {size / 1024:.0f} KiB, built in {build_s:.1f}s")
    keep = os.environ.get("REPORT_SCREENSHOTS_DIR")
    with Chromium() as browser:
        for page in sorted(out.rglob("*.html")):
            visit = browser.visit(page.as_uri())
            assert visit.errors == [], f"{page.name}: {visit.errors}"
            assert visit.title.endswith("report")
            if page.name != "index.html":
                assert len(visit.images) == len(CHART_FILES), f"{page.name}: {visit.images}"
            for img in visit.images:
                assert img["complete"] and img["width"] > 100 and img["height"] > 100, (page.name, img)
            shot = Image.open(io.BytesIO(visit.screenshot)).convert("RGB")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shot.save(Path(keep) / f"{page.parent.name}_{page.stem}.png")
            if page.name == "index.html":
                assert shot.height > 200
                continue
            # The charts are on screen: a tall page with plenty of coloured (non-grey) pixels from the plots.
            assert shot.width == 1200 and shot.height > 3000
            small = shot.resize((shot.width // 4, shot.height // 4))
            pixels = list(zip(*(band.tobytes() for band in small.split()), strict=True))
            coloured = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 40)
            assert coloured / len(pixels) > 0.03, f"{page.name}: {coloured / len(pixels):.3f} coloured"
            assert len(set(pixels)) > 200
    shutil.rmtree(out)
