"""One Settings object for the whole product, read from the environment and `.env`.

No `SUPABASE_URL` means the embedded SQLite store (`ML_LOCAL_DB`), so a newcomer can run the job at once.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from config.timeframes import TIMEFRAMES

__all__ = [
    "DEFAULT_TIMEFRAMES",
    "TIMEFRAMES",
    "Settings",
    "TimeframeSpec",
    "get_settings",
    "settings_error_line",
]

GbBackend = Literal["lightgbm", "hist_gb", "sklearn_gb"]
ThresholdMode = Literal["fixed", "quantile", "vol", "ex_ante_vol"]
ClassWeight = Literal["none", "balanced"]
# Scores that are sums of per-row contributions, so challenger and champion can be compared row by row.
PromotionMetric = Literal["test_balanced_accuracy", "test_accuracy"]


class TimeframeSpec(BaseModel):
    """How one timeframe is labelled and how much history it trains on."""

    horizon_bars: int = Field(gt=0, le=100)
    threshold: float = Field(gt=0, lt=0.5, description="fixed mode: |horizon return| above this is a move")
    target_bars: int = Field(gt=0, description="bars in the training window, before warm-up history")
    warmup_bars: int | None = Field(
        default=None,
        ge=0,
        description="history fetched before the window; None (or less) = the feature set's own WARMUP_BARS",
    )
    bars_per_year: float = Field(gt=0, description="for annualising trading metrics")
    max_model_age_days: float = Field(gt=0, description="a champion older than this is expired")
    # Longer than any market closure (Sept 2001: 7.0 days open to open), shorter than a data outage.
    max_gap_days: float = Field(
        default=10.0, gt=0, description="a longer hole between two bars fails the pair"
    )


# Horizons and thresholds are the seed's for m15..d1. w1: a 4-week horizon, with the d1 threshold scaled by
# sqrt(20/5) = 2 (returns grow with the square root of time), so a "move" is about as rare as on d1.
# warmup_bars defaults to the feature set's own look-back (technical_indicators.WARMUP_BARS); the pipeline never
# fetches less than that, so an override can only add history.
DEFAULT_TIMEFRAMES: dict[str, TimeframeSpec] = {
    "m15": TimeframeSpec(
        horizon_bars=5,
        threshold=0.002,
        target_bars=500,
        bars_per_year=252 * 26,
        max_model_age_days=3,
    ),
    "h1": TimeframeSpec(
        horizon_bars=5,
        threshold=0.003,
        target_bars=500,
        bars_per_year=252 * 7,
        max_model_age_days=7,
    ),
    "h4": TimeframeSpec(
        horizon_bars=3,
        threshold=0.005,
        target_bars=500,
        bars_per_year=252 * 2,
        max_model_age_days=10,
    ),
    "d1": TimeframeSpec(
        horizon_bars=5,
        threshold=0.009,
        target_bars=500,
        bars_per_year=252,
        max_model_age_days=14,
    ),
    "w1": TimeframeSpec(
        horizon_bars=4,
        threshold=0.018,
        target_bars=400,
        bars_per_year=52,
        max_model_age_days=45,
        max_gap_days=21,
    ),
}


G = TypeVar("G", bound=BaseModel)


def _default_home() -> Path:
    """Where the embedded store and the models live by default: the project checkout, not the working directory.

    A source checkout (the supported layout: `make run`, a systemd unit or cron in /opt/swiftbolt-ml) has
    pyproject.toml beside config/; there the defaults are `<checkout>/.local/swiftbolt_ml.sqlite3` and
    `<checkout>/trained_models`, whatever directory the command runs from. An installed package (no checkout)
    uses `$XDG_DATA_HOME/swiftbolt-ml` (default `~/.local/share/swiftbolt-ml`).
    """
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "swiftbolt-ml"


DEFAULT_HOME = _default_home()


def _split_list(value: Any) -> Any:
    """Accept `AAPL,MSFT`, `AAPL MSFT` or a JSON list for list settings."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part for part in text.replace(",", " ").split() if part]
    return value


class StoreSettings(BaseModel):
    """Where things live and how the store is reached: the embedded SQLite file or Supabase, the models
    directory, the artifact key, the feature cache and the retry policy of store calls."""

    supabase_url: str | None = Field(default=None, validation_alias=AliasChoices("SUPABASE_URL"))
    supabase_service_role_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_KEY")
    )
    # Defaults are absolute (DEFAULT_HOME); an explicit relative value is taken relative to the working directory
    # where the settings are read, and made absolute at once, so one process never sees two meanings.
    local_db: Path = Field(
        default=DEFAULT_HOME / ".local" / "swiftbolt_ml.sqlite3", validation_alias=AliasChoices("ML_LOCAL_DB")
    )
    models_dir: Path = Field(
        default=DEFAULT_HOME / "trained_models", validation_alias=AliasChoices("ML_MODELS_DIR")
    )
    # HMAC-SHA256 key for model artifacts: when set, every bundle is signed when saved and refused when loaded
    # without a valid signature recorded in the ledger.
    artifact_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("ML_ARTIFACT_KEY"))
    # The feature cache (both stores): `on` reads cached features and computes only the missing rows, `off` computes
    # every row and leaves the cache alone. `auto` (the old default) now means `on`. Cost: docs/benchmarks.md.
    feature_cache: Literal["on", "off", "auto"] = "on"
    db_timeout_s: float = Field(default=30.0, gt=0)
    db_max_retries: int = Field(default=4, ge=0)
    db_backoff_s: float = Field(default=0.5, ge=0)

    @property
    def uses_supabase(self) -> bool:
        return bool(self.supabase_url)


class UniverseSettings(BaseModel):
    """What to train on: the symbols a flagless run names, the per-timeframe table (horizon, thresholds,
    window, age limits), and the inputs besides the pair's own indicators (volatility features, context)."""

    # Symbols trained / forecast when no flag selects any. Empty (the default): the universe, i.e. the pairs the
    # store has bars for, so a fresh checkout's `make run` data is what a flagless run covers.
    default_symbols: Annotated[list[str], NoDecode] = Field(default_factory=list)
    timeframes: dict[str, TimeframeSpec] = Field(default_factory=lambda: dict(DEFAULT_TIMEFRAMES))
    # ML_VOL_FEATURES: add HAR-style realised volatility, range estimators and vol of vol to the features (the
    # feature set's version, and with it the cache key, changes). Measured in docs/benchmarks.md (issue 20).
    vol_features: bool = False
    # ML_CONTEXT_SYMBOLS: market context (e.g. GSPC): its returns, volatility, rolling correlation and beta with
    # the pair, and relative strength, joined as of each bar's close. A pair whose context lacks bars trains
    # without it (one line says so). Empty (the default): no context. Measured in docs/benchmarks.md.
    context_symbols: Annotated[list[str], NoDecode] = Field(default_factory=list)


class SplitSettings(BaseModel):
    """Labels and the time-ordered split: how a move is defined, the slice fractions, walk-forward folds."""

    threshold_mode: ThresholdMode = "vol"
    threshold_k: float = Field(
        default=0.5,
        gt=0,
        le=3,
        description="vol mode: a move is |return| > k x std of train horizon returns; ex_ante_vol mode: "
        "|return| > k x the bar's own EWMA volatility x sqrt(horizon)",
    )
    train_fraction: float = Field(default=0.6, gt=0, lt=1)
    valid_fraction: float = Field(default=0.2, gt=0, lt=1)
    min_rows_per_split: int = Field(default=30, ge=5)
    walk_forward_folds: int = Field(default=0, ge=0, description="nightly walk-forward folds; 0 = off")


class ModelSettings(BaseModel):
    """The members and the ensemble weights."""

    # Regularised members (shallow trees, many rows per leaf) with the same class weighting, each calibrated on
    # valid, blended by Ridge weights shrunk toward equal weights; chosen by walk-forward log loss, balanced
    # accuracy, IC and fit time (docs/benchmarks.md, "Model quality"). ML_GB_BACKEND=sklearn_gb etc. still work.
    random_state: int = 42
    class_weight: ClassWeight = Field(default="none", description="both members: none or balanced")
    rf_n_estimators: int = Field(default=50, ge=1)
    rf_max_depth: int | None = Field(default=6, ge=1)
    rf_min_samples_split: int = Field(default=2, ge=2)
    rf_min_samples_leaf: int = Field(default=50, ge=1)
    rf_max_features: float | Literal["sqrt", "log2"] = "sqrt"
    rf_max_samples: float | None = Field(default=None, gt=0, le=1, description="bootstrap share per tree")
    # Rows per tree (bootstrap size) at most this many; 0 = no cap. Apart from rf_max_samples (a share), and
    # affects only windows with more training rows than the cap (target_bars above ~6,700): the forest's cost
    # stops growing with the window (docs/benchmarks.md, "forest").
    rf_sample_cap: int = Field(default=4000, ge=0)
    gb_backend: GbBackend = "lightgbm"
    gb_n_estimators: int = Field(default=100, ge=1)
    gb_learning_rate: float = Field(default=0.05, gt=0, le=1)
    gb_max_depth: int = Field(default=3, ge=1)
    gb_min_samples_leaf: int = Field(default=50, ge=1)
    gb_subsample: float = Field(default=1.0, gt=0, le=1, description="rows sampled per boosting round")
    gb_colsample: float = Field(default=1.0, gt=0, le=1, description="features sampled per tree")
    calibrate: bool = Field(default=True, description="fit one temperature toward the class mix per member")
    # penalties tried for the Ridge weights (equal weights = an infinite penalty is always tried too)
    ridge_alphas: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    )
    ridge_se_rule: float = Field(
        default=1.0, ge=0, description="keep the strongest penalty within this many s.e. of the best"
    )
    ridge_balanced: bool = Field(
        default=True, description="weight the Brier rows so every class counts equally"
    )
    refit_on_valid: bool = Field(
        default=False, description="refit the members on train + valid for the saved model"
    )
    # ML_POOLED_MODELS: per timeframe, also fit each pair a pooled candidate on every pair's training rows known
    # by its train end, and keep it only where it beats the local model on paired out-of-sample rows (the
    # promotion gate's rule); metrics.pooling says which. Off: measured in docs/benchmarks.md (issue 20).
    pooled_models: bool = Field(
        default=False,
        description="per timeframe, a pooled candidate over every pair's training rows, kept where it beats "
        "the local model out of sample",
    )


class EvaluationSettings(BaseModel):
    """Scores beside their baselines, verdicts, trading metrics, the promotion gate and retention."""

    trading_fee_bps: float = Field(default=5.0, ge=0)
    trading_slippage_bps: float = Field(default=5.0, ge=0)
    trading_allow_short: bool = True
    promotion_metric: PromotionMetric = "test_balanced_accuracy"
    promotion_z: float = Field(
        default=1.645, ge=0, description="a challenger must beat the champion by z standard errors"
    )
    promotion_baseline_margin: float = Field(default=0.0, ge=0, description="and every baseline by this")
    verdict_z: float = Field(default=2.0, ge=0, description="standard errors for a skill / worse verdict")
    verdict_fdr: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="false discovery rate for skill: a pair reads skill only with its Benjamini-Hochberg "
        "q-value across the run's succeeded pairs at or below this",
    )
    ic_permutations: int = Field(default=1000, ge=0, description="block permutations for the IC p-value")
    trading_confidence: bool = Field(
        default=True, description="also trade only above a confidence threshold fitted on valid"
    )
    keep_versions: int = Field(
        default=5, ge=1, description="newest versions kept per pair, besides the champion"
    )


class ScheduleSettings(BaseModel):
    """The nightly schedule (cron fields, UTC; NYSE holidays skipped)."""

    # 22:30 UTC Mon-Fri = 17:30 EST / 18:30 EDT: after the 16:00 New York close, all year round.
    schedule_daily_cron: str = "30 22 * * mon-fri"
    schedule_daily_timeframes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["m15", "h1", "h4", "d1"]
    )
    # Saturday 14:00 UTC = 09:00 EST / 10:00 EDT: once a week, after the week's last session.
    schedule_weekly_cron: str = "0 14 * * sat"
    schedule_weekly_timeframes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["w1"])
    # Forecasts: after each training group (its timeframes), and on their own cron for the intraday timeframes,
    # whose bars close many times a day. Default: 5, 20, 35 and 50 minutes past each hour from 13:05 to 21:50
    # UTC on NYSE trading days, which covers the 09:30-16:00 New York session in winter and summer. An empty
    # cron (or no timeframes) schedules no separate forecast job.
    schedule_forecast_cron: str = "5,20,35,50 13-21 * * mon-fri"
    schedule_forecast_timeframes: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["m15", "h1", "h4"]
    )
    schedule_forecast_after_training: bool = True
    # The replay (python -m ml.src.training.replay) of every active pair's last `schedule_replay_last` bars on
    # these timeframes, at the schedule's cadence; its rows become the training job's verdict basis. Off by
    # default (empty cron): a replay refits every pair at every retrain point. E.g. "0 18 * * sun" weekly.
    schedule_replay_cron: str = ""
    schedule_replay_timeframes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["d1", "w1"])
    schedule_replay_last: int = Field(default=250, ge=1, description="bars each scheduled replay walks")
    schedule_misfire_grace_hours: float = Field(default=6.0, gt=0)
    schedule_skip_holidays: bool = True


class MonitoringSettings(BaseModel):
    """The RETRAIN / DISABLE / LIVE thresholds of the health report."""

    monitor_retrain_drop: float = Field(
        default=0.05, ge=0, description="RETRAIN when accuracy falls this much"
    )
    monitor_disable_runs: int = Field(
        default=3, ge=1, description="DISABLE after this many runs below baselines"
    )
    monitor_live_min_forecasts: int = Field(
        default=20, ge=1, description="LIVE flag only once this many forecasts are realised"
    )
    monitor_history_runs: int = Field(
        default=5, ge=1, description="RETRAIN compares the latest run with the mean of this many before it"
    )


class ExecutionSettings(BaseModel):
    """Where fits run and one run at a time: local workers, Dask, leases, artifact compression."""

    lease_ttl_s: int = Field(default=900, ge=10, description="a lease not renewed for this long is expired")
    workers: int = Field(
        default=0, ge=0, description="processes training pairs in parallel; 0 = one per core"
    )
    pool_min_pairs: int = Field(
        default=2,
        ge=1,
        description="fewer pairs than this fit in the job's own process, without starting worker processes",
    )
    artifact_compress: int = Field(
        default=0, ge=0, le=9, description="zlib level of saved bundles; 0 = none (faster, ~2.5x larger)"
    )
    dask_address: str | None = Field(
        default=None, description="Dask scheduler address (tls://host:8786): fit pairs on that cluster"
    )
    dask_allow_insecure: bool = Field(
        default=False,
        description="accept a plain tcp:// Dask scheduler (no TLS): anyone who can reach it runs code in the job",
    )
    dask_connect_timeout_s: float = Field(default=30.0, gt=0)
    dask_no_worker_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="pairs still waiting fail once the cluster has had no worker this long",
    )


class FitSettings(SplitSettings, ModelSettings, EvaluationSettings):
    """Everything a fit needs and nothing else: what a worker receives (no secret, no address, by construction)."""


class Settings(
    StoreSettings,
    UniverseSettings,
    FitSettings,
    ScheduleSettings,
    MonitoringSettings,
    ExecutionSettings,
    BaseSettings,
):
    """Every setting, read from ML_* variables (and .env): the union of the component groups above. A component
    takes its group (`settings.fit`, `settings.schedule`, ...), not the whole."""

    model_config = SettingsConfigDict(
        env_prefix="ML_", env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    @field_validator("local_db", "models_dir", mode="after")
    @classmethod
    def _absolute_path(cls, value: Path) -> Path:
        if str(value) in ("", ":memory:"):
            return value
        return Path(os.path.abspath(value.expanduser()))

    @field_validator("artifact_key", mode="after")
    @classmethod
    def _non_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None  # ML_ARTIFACT_KEY= (empty) means no key
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (a random secret, e.g. `openssl rand -hex 32`)")
        return value

    @field_validator("default_symbols", "context_symbols", mode="before")
    @classmethod
    def _parse_symbols(cls, value: Any) -> Any:
        value = _split_list(value)
        if isinstance(value, list):
            return [str(v).strip().upper() for v in value]
        return value

    @field_validator("ridge_alphas", mode="before")
    @classmethod
    def _parse_alphas(cls, value: Any) -> Any:
        value = _split_list(value)
        if isinstance(value, list) and any(float(v) < 0 for v in value):
            raise ValueError("penalties must be >= 0")
        return value

    @field_validator(
        "schedule_daily_timeframes",
        "schedule_weekly_timeframes",
        "schedule_forecast_timeframes",
        "schedule_replay_timeframes",
        mode="before",
    )
    @classmethod
    def _parse_timeframe_list(cls, value: Any) -> Any:
        value = _split_list(value)
        if isinstance(value, list):
            bad = [v for v in value if v not in TIMEFRAMES]
            if bad:
                raise ValueError(f"unknown timeframe(s) {bad}; expected a subset of {list(TIMEFRAMES)}")
        return value

    @field_validator("timeframes", mode="before")
    @classmethod
    def _merge_timeframes(cls, value: Any) -> Any:
        # ML_TIMEFRAMES='{"d1": {"threshold": 0.01}}' overrides one field and keeps the other defaults.
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(TIMEFRAMES))
        if unknown:
            raise ValueError(f"unknown timeframe(s) {unknown}; expected a subset of {list(TIMEFRAMES)}")
        merged: dict[str, Any] = {}
        for tf, spec in DEFAULT_TIMEFRAMES.items():
            override = value.get(tf, {})
            if isinstance(override, TimeframeSpec):
                override = override.model_dump()
            merged[tf] = {**spec.model_dump(), **override}
        return merged

    @model_validator(mode="after")
    def _check_fractions(self) -> Settings:
        if self.train_fraction + self.valid_fraction >= 1:
            raise ValueError("train_fraction + valid_fraction must leave room for a test slice (< 1)")
        if self.supabase_url and self.supabase_service_role_key is None:
            raise ValueError("SUPABASE_URL is set but SUPABASE_SERVICE_ROLE_KEY (or SUPABASE_KEY) is not")
        return self

    def group(self, cls: type[G]) -> G:
        """This configuration's values of one component group (no validation again: they were validated here)."""
        return cls.model_construct(**{name: getattr(self, name) for name in cls.model_fields})

    @property
    def store(self) -> StoreSettings:
        return self.group(StoreSettings)

    @property
    def universe(self) -> UniverseSettings:
        return self.group(UniverseSettings)

    @property
    def fit(self) -> FitSettings:
        return self.group(FitSettings)

    @property
    def schedule(self) -> ScheduleSettings:
        return self.group(ScheduleSettings)

    @property
    def monitoring(self) -> MonitoringSettings:
        return self.group(MonitoringSettings)

    @property
    def execution(self) -> ExecutionSettings:
        return self.group(ExecutionSettings)

    def public_dict(self) -> dict[str, Any]:
        """The configuration as recorded in the run ledger: no secrets."""
        data = self.model_dump(mode="json", exclude={"supabase_service_role_key", "artifact_key"})
        data["supabase_service_role_key"] = "***" if self.supabase_service_role_key else None
        data["artifact_key"] = "***" if self.artifact_key else None
        return data


# The component groups, each a part of Settings (every field in exactly one; tests/test_settings_groups.py).
COMPONENTS: dict[str, type[BaseModel]] = {
    "store": StoreSettings,
    "universe": UniverseSettings,
    "split": SplitSettings,
    "models": ModelSettings,
    "evaluation": EvaluationSettings,
    "schedule": ScheduleSettings,
    "monitoring": MonitoringSettings,
    "execution": ExecutionSettings,
}


def settings_error_line(exc: ValidationError) -> str:
    """One line for a settings error: which setting, what is wrong."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__") or "settings"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "invalid settings: " + "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
