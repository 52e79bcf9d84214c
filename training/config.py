"""Configuration of `fraud-train`: one settings model, every knob defaulted and documented.

Values come from, highest first: the environment (`FRAUD_TRAIN_` prefix, `__` between
nested names, e.g. `FRAUD_TRAIN_BOOSTER__LEARNING_RATE=0.03`), the TOML file given with
`--config`, then the defaults below. `fraud-train config` prints the effective values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.config.layered import ConfigError, load_layered_settings
from service.features import FeatureConfig

# What a decline with no reported outcome counts as in a retrain (`RetrainSettings`).
SilentDeclines = Literal["exclude", "genuine"]

__all__ = ["ConfigError", "TrainSettings", "load_settings"]


class ThresholdPolicy(BaseModel):
    """How review and decline thresholds are chosen from validation scores."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    alert_rate: float = Field(default=0.01, gt=0, le=1)
    """Share of transactions sent to review or decline: the daily alert budget as a share
    of the day's traffic."""

    decline_precision: float = Field(default=0.9, gt=0, le=1)
    """Lowest precision acceptable among declines."""

    min_declines: int = Field(default=20, ge=1)
    """Declines on validation needed before the precision estimate is trusted."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class SplitConfig(_Section):
    """Time-ordered periods, as in the handbook: train, a label-delay gap, validation, test."""

    warmup_days: int = Field(default=30, ge=0)
    """First days of history only fill the feature state (30-day windows); never trained on."""

    validation_days: int = Field(default=14, ge=1)
    """Days used for early stopping and for choosing the decision thresholds."""

    test_days: int = Field(default=14, ge=1)
    """Last days of history, only used to report metrics and run the gates."""


class BoosterConfig(_Section):
    """LightGBM hyperparameters. Fixed seeds and threads: same data and config, same model."""

    learning_rate: float = Field(default=0.05, gt=0, le=1)
    """Shrinkage per tree."""

    num_leaves: int = Field(default=31, ge=2)
    """Leaves per tree."""

    min_child_samples: int = Field(default=100, ge=1)
    """Fewest transactions in a leaf: large values keep trees from memorising rare frauds."""

    max_bin: int = Field(default=4095, ge=15)
    """Histogram bins per feature; fine split points on amounts and risk ratios matter."""

    feature_fraction: float = Field(default=0.8, gt=0, le=1)
    """Share of features each tree may use."""

    bagging_fraction: float = Field(default=0.8, gt=0, le=1)
    """Share of rows each tree sees."""

    lambda_l2: float = Field(default=1.0, ge=0)
    """L2 regularisation of leaf values."""

    max_rounds: int = Field(default=500, ge=1)
    """Most trees; inference cost per row grows with it."""

    early_stopping_rounds: int = Field(default=50, ge=1)
    """Stop when validation average precision has not improved for this many trees."""

    num_threads: int = Field(default=2, ge=1)
    """Training threads. Part of the config because results may depend on it."""

    seed: int = 7
    """Seed of every random choice LightGBM makes."""

    def lightgbm_params(self) -> dict[str, Any]:
        """The parameter dict for `lightgbm.train`."""
        return {
            "objective": "binary",
            "metric": "average_precision",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "max_bin": self.max_bin,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "verbosity": -1,
        }


class ClusterFitConfig(_Section):
    """How `fraud-train train --dask` fits: on one machine when the feature matrix fits a
    worker, else with `lightgbm.dask` across the workers (docs/training.md)."""

    fit: Literal["auto", "local", "cluster"] = "auto"
    """`auto`: local when the matrix fits the smallest worker's memory, else on the cluster;
    `local` or `cluster` forces one."""

    sample_rows: int = Field(default=1_000_000, ge=1_000)
    """Training rows (and as many validation rows) sampled to choose the number of rounds of
    a cluster fit by early stopping: `lightgbm.dask` cannot stop early."""


class GateConfig(_Section):
    """Quality gates a candidate must pass before it is published."""

    min_auc_roc: float = Field(default=0.80, ge=0, le=1)
    """Lowest test AUC ROC."""

    min_average_precision: float = Field(default=0.40, ge=0, le=1)
    """Lowest test average precision."""

    min_card_precision_at_100: float = Field(default=0.0, ge=0, le=1)
    """Lowest test card precision@100 (it depends on fraud volume: 0 disables)."""

    max_regression: float = Field(default=0.02, ge=0, le=1)
    """How far below the champion (same test data) AUC or average precision may fall."""

    max_parity_gap: float = Field(default=1e-5, gt=0, le=1e-3)
    """Largest |ONNX - LightGBM| score difference over the test set."""


class RetrainConfig(_Section):
    """`fraud-train retrain`: a candidate from the decision log and outcomes, judged against
    the champion on the most recent labelled window."""

    evaluation_days: int = Field(default=7, ge=1)
    """Most recent days of labelled logged transactions both models are scored on; the
    candidate never trains on them."""

    validation_days: int = Field(default=7, ge=1)
    """Days just before the evaluation window (after a label-delay gap) used for early
    stopping and for choosing the candidate's thresholds."""

    min_new_frauds: int = Field(default=10, ge=1)
    """Fraud reports received since the champion's data ended that a retrain needs; with
    fewer, there is nothing new to learn and nothing is published."""

    min_evaluation_frauds: int = Field(default=20, ge=1)
    """Labelled frauds the evaluation window needs for a comparison worth acting on."""

    min_improvement: float = Field(default=0.01, ge=0, le=1)
    """How much higher the candidate's average precision on the evaluation window must be
    than the champion's before it is published as challenger."""

    silent_declines: SilentDeclines = "exclude"
    """What a declined transaction (declined by the model or by the fallback) counts as when
    no outcome was reported for it. A decline blocks the payment, so it rarely draws a
    chargeback: its silence is no evidence either way, and counting it genuine (as an
    unreported transaction is once its label delay has passed) would teach the candidate
    that the champion's declines were mistakes. `exclude` leaves such rows out, counted as
    `silent_decline`; `genuine` counts them genuine. Declines with a reported outcome are
    used either way, and reviews always: they are investigated and get outcomes."""


class TriggerConfig(_Section):
    """When `fraud-train retrain --watch` retrains; each trigger on its own, any one fires."""

    check_seconds: float = Field(default=300.0, gt=0)
    """Time between two looks at the triggers."""

    schedule_hours: float = Field(default=168.0, ge=0)
    """Retrain when the last publication or declined retrain is this old (168: weekly);
    0 turns the schedule off."""

    metrics_urls: list[str] = []
    """Servers' `/metrics` addresses read for the drift trigger and the shadow agreement,
    e.g. `http://127.0.0.1:9464/metrics`; empty turns both off."""

    drift_psi: float = Field(default=0.25, gt=0)
    """Population stability index of any input feature (or the score) above which drift is
    counted; 0.25 is the customary "significant shift"."""

    drift_checks: int = Field(default=3, ge=1)
    """Consecutive looks the drift must last before it fires, so one noisy window does not."""

    precision_floor: float = Field(default=0.2, ge=0, le=1)
    """Retrain when the live precision of the model's reviews and declines (share that
    proved fraud, from the outcomes) falls below this; 0 turns the trigger off."""

    precision_window_days: float = Field(default=7.0, gt=0)
    """Most recent days of labelled decisions the live precision is computed over."""

    min_labelled_alerts: int = Field(default=30, ge=1)
    """Labelled reviews and declines the precision needs before it may fire."""


class PromotionConfig(_Section):
    """Who makes the challenger the champion."""

    mode: Literal["manual", "automatic"] = "manual"
    """`manual`: a person reads the retrain report and runs `fraud-train registry promote
    challenger`. `automatic`: `--watch` promotes once the conditions below hold."""

    shadow_hours: float = Field(default=24.0, ge=0)
    """Time the challenger must have run in shadow (since it was named) before it may be
    promoted automatically."""

    min_agreement: float = Field(default=0.9, ge=0, le=1)
    """Share of shadow decisions the challenger must agree with the champion on."""

    min_comparisons: int = Field(default=1000, ge=1)
    """Shadow comparisons needed before the agreement counts."""

    min_average_precision: float = Field(default=0.4, ge=0, le=1)
    """Lowest average precision of the challenger on its evaluation window."""


class TrainSettings(BaseSettings):
    """Everything `fraud-train` needs to turn a history into a published model."""

    model_config = SettingsConfigDict(
        env_prefix="FRAUD_TRAIN_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    registry: Path = Path("models")
    """Model registry directory (versions, aliases, history); `--registry` overrides it."""

    signing_key: FilePath | None = None
    """Ed25519 private key (`fraud-train keys generate`) that signs every published
    manifest; servers that list its public key in `models.trusted_keys` serve only what it
    signed. Unset: versions are published unsigned, which only a development server serves."""

    features: FeatureConfig = FeatureConfig()
    """Feature engine settings; recorded in the manifest, the server must use the same."""

    split: SplitConfig = SplitConfig()
    """How history is cut into periods."""

    booster: BoosterConfig = BoosterConfig()
    """Model hyperparameters."""

    thresholds: ThresholdPolicy = ThresholdPolicy()
    """How the review and decline thresholds are chosen on validation data."""

    gates: GateConfig = GateConfig()
    """What a model must achieve to be published."""

    cluster: ClusterFitConfig = ClusterFitConfig()
    """Where `train --dask` fits the model."""

    golden_sample_rows: int = Field(default=256, ge=1, le=10_000)
    """Feature rows stored in the manifest with their scores; serving replays them."""

    card_precision_k: int = Field(default=100, ge=1)
    """k of the daily card precision@k (cards an investigator team checks a day)."""

    rules_max_decline_rate: float = Field(default=0.01, ge=0, le=1)
    """`fraud-train rules publish` refuses a rule set whose backtest declines more than this
    share of the history's transactions (lists and rules together), unless --force."""

    retrain: RetrainConfig = RetrainConfig()
    """How a retrain builds, judges and publishes its candidate."""

    triggers: TriggerConfig = TriggerConfig()
    """When the retrain loop (`--watch`) retrains."""

    promotion: PromotionConfig = PromotionConfig()
    """Manual or automatic promotion of the challenger."""


def load_settings(config_file: Path | None = None) -> TrainSettings:
    """Settings from the environment over `config_file` (TOML) over the defaults."""
    return load_layered_settings(TrainSettings, config_file)
