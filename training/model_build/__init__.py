"""From features to a published candidate: booster, ONNX export and parity, thresholds,
golden sample, drift reference, reason tables, quality gates."""
