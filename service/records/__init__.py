"""The append-only records kept for retraining: decisions and outcomes.

`schema` is the one definition of a record line and of segment names, imported by the
server's writers here and by training's reader (`training.retraining.feedback`);
`segment_log` is the rotated, bounded, off-the-request-path JSON-lines writer.
May import `service.core`, `service.features` and `service.observability`.
"""
