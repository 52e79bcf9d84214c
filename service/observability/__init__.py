"""What operators see: Prometheus metrics, structured logs, drift statistics, GC policy.

Metric objects are defined once here with fixed label names; the drift bins and PSI are the
maths the manifest's drift reference and the drift monitor share. May import
`service.core` (for the types it counts); never the model loader, the records or gRPC.
"""
