"""`--dask`: what it accepts, and a local cluster that listens on loopback only."""

from __future__ import annotations

from typing import Any

import pytest
from distributed import Client

from tests.training.cli.fraud_train import exit_code
from training.data.cluster import ClusterSpec, describe_cluster, parse_cluster

LOOPBACK = "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("local", ClusterSpec()),
        ("local:3", ClusterSpec(workers=3)),
        ("tcp://scheduler:8786", ClusterSpec(address="tcp://scheduler:8786")),
        ("10.0.0.5:8786", ClusterSpec(address="10.0.0.5:8786")),
    ],
)
def test_cluster_names_accepted(text: str, spec: ClusterSpec):
    assert parse_cluster(text) == spec


@pytest.mark.parametrize("text", ["local:0", "local:two", "localhost", "cluster"])
def test_other_cluster_names_are_refused(text: str):
    with pytest.raises(ValueError, match=text):
        parse_cluster(text)


def test_a_bad_dask_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]):
    assert exit_code(["train", "--data", "days", "--dask", "local:0"]) == 2
    assert "local:N needs a number of workers of 1 or more" in capsys.readouterr().err


def test_the_local_cluster_listens_on_loopback_only(dask_client: Client):
    def http_hosts(server: Any) -> list[str]:
        return [socket.getsockname()[0] for socket in server.http_server._sockets.values()]

    scheduler_http = dask_client.run_on_scheduler(lambda dask_scheduler: http_hosts(dask_scheduler))
    worker_http = dask_client.run(lambda dask_worker: http_hosts(dask_worker))
    workers = dask_client.scheduler_info()["workers"]

    assert dask_client.scheduler.address.startswith(f"tcp://{LOOPBACK}:")
    assert len(workers) == 2
    assert all(address.startswith(f"tcp://{LOOPBACK}:") for address in workers)
    assert set(scheduler_http) == {LOOPBACK}
    assert all(set(hosts) == {LOOPBACK} for hosts in worker_http.values())
    assert describe_cluster(dask_client).startswith(f"Dask cluster tcp://{LOOPBACK}:")
