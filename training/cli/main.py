"""`fraud-train`: simulate histories, train and publish models, evaluate, manage the registry.

Exit codes: 0 success; 1 unexpected error; 2 bad input or usage (the message says which
file, row, column or setting); 3 a quality gate failed and nothing was published; 4 a
retrain declined to publish (no new labels, or the candidate is not better; it says why).

    parser.py             the command line
    data_commands.py      simulate, config
    model_commands.py     train, evaluate, backtest
    registry_commands.py  registry list, promote, rollback
    retrain_commands.py   retrain, once or --watch
    rules_commands.py     rules validate, publish, promote, rollback, show, backtest, list
    state_commands.py     state build
    options.py            the options several commands share
    console.py            messages, JSON output, exit codes
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from service.core.rule_compiler import RuleError
from service.model.artifact import ArtifactError
from service.model.registry import RegistryError
from service.state.errors import StateStoreError
from training.cli.console import EXIT_BAD_INPUT, EXIT_GATE_FAILED, error
from training.cli.parser import build_parser
from training.config import ConfigError
from training.data.cluster import ClusterError
from training.data.loading import DataError
from training.data.split import SplitError
from training.data.state_publishing import StateTargetError
from training.evaluation.evaluate import EvaluationError
from training.model_build.gates import GateFailure
from training.retraining.feedback import FeedbackError

# What bad input raises, anywhere in the pipeline: a message for the user, exit 2. Any other
# exception is a bug: it propagates, and Python prints its traceback and exits 1.
_BAD_INPUT = (
    ArtifactError,
    ClusterError,
    ConfigError,
    DataError,
    EvaluationError,
    FeedbackError,
    RegistryError,
    RuleError,
    SplitError,
    StateStoreError,
    StateTargetError,
    FileNotFoundError,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `fraud-train` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except GateFailure as failure:
        error(str(failure))
        return EXIT_GATE_FAILED
    except _BAD_INPUT as bad_input:
        error(str(bad_input))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
