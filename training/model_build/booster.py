"""Fitting the LightGBM classifier, with early stopping on the validation period."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from training.config import BoosterConfig


def fit_booster(
    config: BoosterConfig,
    feature_names: Sequence[str],
    train: tuple[NDArray[np.float32], NDArray[np.int8]],
    validation: tuple[NDArray[np.float32], NDArray[np.int8]] | None = None,
    *,
    progress: bool = False,
) -> lgb.Booster:
    """Train a binary classifier; with `validation`, stop once it no longer improves."""
    params = config.lightgbm_params()
    names = list(feature_names)
    train_set = lgb.Dataset(train[0], label=train[1], feature_name=names, free_raw_data=True)
    callbacks: list[Callable[..., Any]] = []
    valid_sets = []
    if validation is not None:
        valid_sets.append(lgb.Dataset(validation[0], label=validation[1], reference=train_set))
        callbacks.append(lgb.early_stopping(config.early_stopping_rounds, verbose=False))
    with tqdm(total=config.max_rounds, desc="trees", disable=not progress) as bar:
        callbacks.append(lambda _: bar.update())
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=config.max_rounds,
            valid_sets=valid_sets,
            callbacks=callbacks,
        )
    if validation is not None:
        # Keep only the trees up to the best iteration: smaller model, faster serving.
        booster = lgb.Booster(
            model_str=booster.model_to_string(num_iteration=booster.best_iteration)
        )
    return booster


def predict(booster: lgb.Booster, features: NDArray[np.float32]) -> NDArray[np.float64]:
    """Native fraud probabilities; one thread, so a busy neighbour cannot stall it."""
    return np.asarray(booster.predict(features, num_threads=1), dtype=np.float64)
