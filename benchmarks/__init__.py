"""`fraud-bench`: the load-test harness; it starts real servers and talks to them over
loopback gRPC. Recorded results: benchmarks/RESULTS.md."""
