"""The library versions a bundle and a run record, from package metadata (no import of the libraries)."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

# Distribution names of the libraries a bundle depends on, as recorded in every bundle and run.
LIBRARIES: dict[str, str] = {
    "numpy": "numpy",
    "pandas": "pandas",
    "scikit-learn": "scikit-learn",
    "lightgbm": "lightgbm",
    "joblib": "joblib",
    "ta-lib": "TA-Lib",
}


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of Python and the model libraries, from package metadata (no import of the libraries);
    computed once per process."""
    import platform

    out = {"python": platform.python_version()}
    for key, dist in LIBRARIES.items():
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "missing"
    return out
