"""`fraud-train`: histories in, checked and published models out, and the retraining loop.

Uses the server's contracts (`service.core`, `service.features`, the artifact and registry of
`service.model`, the record schema of `service.records`) and never its transport or
composition root: training computes features with the very engine the server runs.
"""
