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

from service.named_errors import imported_errors
from training.cli.console import EXIT_BAD_INPUT, EXIT_GATE_FAILED, error
from training.cli.parser import build_parser

# What bad input raises, anywhere in the pipeline: a message for the user, exit 2. Any other
# exception is a bug: it propagates, and Python prints its traceback and exits 1. Named, not
# imported (service.named_errors says why).
BAD_INPUT = (
    "service.core.rule_compiler:RuleError",
    "service.model.artifact:ArtifactError",
    "service.model.registry:RegistryError",
    "service.state.errors:StateStoreError",
    "training.config:ConfigError",
    "training.data.cluster_spec:ClusterError",
    "training.data.loading:DataError",
    "training.data.split:SplitError",
    "training.data.state_publishing:StateTargetError",
    "training.evaluation.evaluate:EvaluationError",
    "training.retraining.feedback:FeedbackError",
)
GATE_FAILED = "training.model_build.gates:GateFailure"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `fraud-train` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except Exception as failure:
        if isinstance(failure, imported_errors([GATE_FAILED])):
            error(str(failure))
            return EXIT_GATE_FAILED
        if isinstance(failure, (*imported_errors(BAD_INPUT), FileNotFoundError)):
            error(str(failure))
            return EXIT_BAD_INPUT
        raise


if __name__ == "__main__":
    sys.exit(main())
