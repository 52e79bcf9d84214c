"""Feature state stores that outlive the process: a file shared by the workers of one
machine (LMDB), or a Redis server shared by replicas. They implement
`service.features.state.StateStore`; the in-process store, for replay and tests, lives with
the features (`service.features.memory_store`)."""
