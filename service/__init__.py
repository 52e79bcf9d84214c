"""The scoring server, in layers; each package imports only those beneath it.

    __main__ (fraud-serve) → app (composition root) → grpc_api → model | records
    → observability → config → features → core

`lint-imports` checks the order (contracts in pyproject.toml); docs/architecture.md draws it
and follows a swipe through it. `named_errors`, outside the layers, serves the command
lines of training and the harness.
"""
