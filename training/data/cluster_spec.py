"""What `--dask` names: `local`, `local:N` or a scheduler address (see
`training.data.cluster`, which connects to it). Apart from it so that parsing a command line
does not import distributed (half a second of a `fraud-train` start)."""

from __future__ import annotations

from dataclasses import dataclass

_LOCAL = "local"


class ClusterError(Exception):
    """The cluster named by `--dask` cannot be used; the message says why."""


@dataclass(frozen=True)
class ClusterSpec:
    """A `LocalCluster` of `workers` processes, or the scheduler at `address`."""

    address: str | None = None
    workers: int | None = None

    @property
    def local(self) -> bool:
        return self.address is None


def parse_cluster(text: str) -> ClusterSpec:
    """`local`, `local:N` or a scheduler address; ValueError for anything else."""
    if text == _LOCAL:
        return ClusterSpec()
    if text.startswith(_LOCAL + ":"):
        count = text.removeprefix(_LOCAL + ":")
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{text!r}: local:N needs a number of workers of 1 or more")
        return ClusterSpec(workers=int(count))
    if "://" not in text and ":" not in text:
        raise ValueError(f"{text!r}: expected local, local:N or a scheduler address host:port")
    return ClusterSpec(address=text)
