"""`fraud-train train`, `evaluate` and `backtest`: a model built, published and measured.

Handlers import their pipeline when they run, so that `--help` and the light commands do
not load what only the heavy ones use; each reads its settings first, so that a bad one is
refused in a second, before seconds of imports.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from training.cli.console import say, show_progress, to_json
from training.cli.options import registry_from, settings_from


def handle_train(args: argparse.Namespace) -> int:
    """Train, gate and publish a model; print its version on stdout."""
    settings = settings_from(args)
    from training.model_build.pipeline import train

    result = train(
        args.data,
        registry_from(args, settings),
        settings,
        promote=not args.no_promote,
        rejects_path=args.rejects,
        progress=show_progress(),
        say=say,
        cluster=args.dask,
    )
    say(result.report)
    promoted = "champion" if result.promoted else "published, not promoted"
    say(f"{promoted}: {result.artifact_dir}")
    print(result.manifest.version)
    return 0


def handle_evaluate(args: argparse.Namespace) -> int:
    """Score a history with a published model; print its metrics as JSON."""
    settings = settings_from(args)
    from training.evaluation.evaluate import evaluate_history

    metrics = evaluate_history(
        args.data,
        registry_from(args, settings),
        version=args.version,
        warmup_days=args.warmup_days,
        scores_out=args.scores_out,
        rejects_path=args.rejects,
        alert_rate=settings.thresholds.alert_rate,
        k=settings.card_precision_k,
        progress=show_progress(),
    )
    print(to_json(metrics))
    return 0


def handle_backtest(args: argparse.Namespace) -> int:
    """Run the handbook's prequential protocol; print per-fold and mean metrics as JSON."""
    settings = settings_from(args)
    from training.model_build.backtest import HANDBOOK_FEATURES, BacktestWindows, run_backtest

    windows = BacktestWindows(
        earliest_start=args.start,
        folds=args.folds,
        train_days=args.train_days,
        test_days=args.test_days,
    )
    if args.handbook_features:
        windows = replace(windows, features=HANDBOOK_FEATURES)
    result = run_backtest(args.data, settings, windows, progress=show_progress(), say=say)
    print(to_json(result))
    return 0
