"""When Python's cyclic garbage collector may run in the server.

A full (generation 2) collection walks every live container object: with the feature state
and the memory of recent answers of a running server that is hundreds of thousands of
objects, and the walk holds the GIL throughout, stalling every request in flight. Under a
steady load these stalls set the tail latency; model loads allocate enough to trigger them
more often, so they stall swaps too (figures in benchmarks/RESULTS.md, "Hot reloads under
load").

So by default the server leaves full collections out. Young objects are still collected
(generations 0 and 1), which is where the cycles of a short request's life (exceptions,
coroutines, futures) die; the state itself is freed by reference counting. A cycle that
outlives two young collections is never freed: a stream's, or one of any call held while
the loop was busy. `fraud-bench fuzz` found three such cycles leaking with every call
(a stream's call and its requests, an aborted call's exception and its frames, the same in
health checks), broken since by the code that made them;
tests/service/grpc_api/test_call_garbage.py counts what a full collection would find after
those calls, so that a new one fails the suite. What leaks shows in
`process_resident_memory_bytes`; `server.full_gc` turns full collections back on.
"""

from __future__ import annotations

import gc

# Generation 2 collects after this many generation 1 collections: never, in practice.
NO_FULL_COLLECTIONS = 1_000_000_000


def configure_garbage_collection(*, full_collections: bool) -> None:
    """Keep Python's default thresholds, without full collections unless asked for."""
    young, middle, _full = gc.get_threshold()
    if not full_collections:
        gc.set_threshold(young, middle, NO_FULL_COLLECTIONS)
