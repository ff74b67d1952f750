"""Which folder a report may replace: one it wrote (MARKER inside), an empty one, or none yet.

Light on imports (no matplotlib): the CLIs check DIR before they open a store or train anything.
"""

from __future__ import annotations

from pathlib import Path

MARKER = ".swiftbolt-report"  # in every report folder: the one kind of folder a rebuild may replace
MARKER_TEXT = (
    "Written by the SwiftBolt ML report (python -m ml.src.monitoring.report --html); a rebuild replaces it.\n"
)


class ReportDirError(ValueError):
    """DIR is not a folder this report may replace; str() is the one-line reason."""


def check_report_dir(out_dir: Path) -> None:
    """Refuse (ReportDirError) a DIR that is a file, a link, or a non-empty folder no report wrote."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise ReportDirError(
            f"refusing to write the report to {out_dir}: it is a symbolic link; name a folder"
        )
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ReportDirError(f"refusing to write the report to {out_dir}: it is a file, not a folder")
    if (out_dir / MARKER).is_file() or not any(out_dir.iterdir()):
        return
    raise ReportDirError(
        f"refusing to replace {out_dir}: it holds files no report wrote (no {MARKER}); name a new or empty folder"
    )
