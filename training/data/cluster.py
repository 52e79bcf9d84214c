"""The Dask cluster a command runs on: `--dask local[:N]` or `--dask ADDRESS`.

`local[:N]` starts a `LocalCluster` of N worker processes (the machine's cores by default),
one thread each (the replay is Python code holding the GIL), bound to 127.0.0.1: nothing
listens beyond loopback. The scheduler's HTTP server takes a free loopback port, and
serves the dashboard there when bokeh is installed (`pip install bokeh`); the command
prints its link. The cluster stops with the command.

An ADDRESS (`tcp://scheduler:8786`) is a scheduler someone else runs; the command connects
as a client and leaves the cluster running. Its workers need this project installed with
the `train` extra (the same versions as the client: they run its replay and its fit) and
must read the `--data` paths at the same place as the client.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from distributed import Client, LocalCluster, WorkerPlugin, futures_of, wait
from distributed.diagnostics.progressbar import progress as progress_bar

# Re-exported: what parsing `--dask` needs lives apart, so that parsing a command line does
# not import distributed.
from training.data.cluster_spec import ClusterError, ClusterSpec, parse_cluster

__all__ = [
    "ClusterError",
    "ClusterSpec",
    "describe_cluster",
    "open_client",
    "parse_cluster",
    "persist_with_progress",
    "smallest_worker_memory",
]

_LOOPBACK = "127.0.0.1"
# A scheduler that does not answer within this is not there: fail rather than hang.
_CONNECT_TIMEOUT = "30s"


@contextlib.contextmanager
def open_client(spec: ClusterSpec) -> Iterator[Client]:
    """A client of the cluster `spec` names; a local cluster stops when the block ends."""
    if not spec.local:
        try:
            client = Client(spec.address, timeout=_CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as error:
            raise ClusterError(f"no Dask scheduler answers at {spec.address}: {error}") from None
        with client:
            yield client
        return
    workers = spec.workers or os.cpu_count() or 1
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host=_LOOPBACK,
            # Also the scheduler's HTTP endpoints (health, metrics): a free loopback port
            # rather than 8787, which another cluster on this machine may hold.
            dashboard_address=f"{_LOOPBACK}:0",
            # A task's exception reaches the command, which reports it: no worker log too.
            silence_logs=logging.CRITICAL,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(_StdoutToStderr())
        yield client


def describe_cluster(client: Client) -> str:
    """Workers, threads and memory of the cluster, and its dashboard when it has one."""
    workers: dict[str, dict[str, Any]] = client.scheduler_info()["workers"]
    threads = sum(int(worker["nthreads"]) for worker in workers.values())
    memory = min((int(worker["memory_limit"]) for worker in workers.values()), default=0)
    dashboard = f"; dashboard {client.dashboard_link}" if _dashboard_of(client) else ""
    return (
        f"Dask cluster {client.scheduler.address}: {len(workers)} workers, {threads} threads, "
        f"{memory / 2**30:.1f} GiB per worker at least{dashboard}"
    )


def smallest_worker_memory(client: Client) -> int:
    """Bytes of memory of the smallest worker (its memory limit)."""
    workers: dict[str, dict[str, Any]] = client.scheduler_info()["workers"]
    if not workers:
        raise ClusterError("the Dask cluster has no workers")
    return min(int(worker["memory_limit"]) for worker in workers.values())


def persist_with_progress(client: Client, collections: Sequence[Any], *, progress: bool) -> Any:
    """`collections` computed on the cluster and kept there; a progress bar on stderr over
    every task they need, when a person is watching."""
    persisted = client.persist(list(collections))
    if progress:
        # distributed's text bar prints to stdout, which carries the command's result.
        with contextlib.redirect_stdout(sys.stderr):
            progress_bar(futures_of(persisted), complete=True)
    wait(futures_of(persisted))
    return persisted


class _StdoutToStderr(WorkerPlugin):  # type: ignore[misc]
    """A local worker's stdout is the command's: what the libraries it runs print there
    (LightGBM's native network log) goes to stderr instead, with the command's messages."""

    def setup(self, worker: object) -> None:
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


def _has_dashboard() -> bool:
    return importlib.util.find_spec("bokeh") is not None


def _dashboard_of(client: Client) -> bool:
    try:
        return bool(client.dashboard_link) and _has_dashboard()
    except (KeyError, AttributeError):
        return False
