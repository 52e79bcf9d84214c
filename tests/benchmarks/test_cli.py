"""`fraud-bench` end to end: real servers, report.json, table, charts, exit statuses."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from benchmarks import cli
from benchmarks.cli import main
from benchmarks.servers.floor import EmptyFloorServicer
from benchmarks.servers.launch import RunningServer, fraud_serve_spec, serving
from tests.benchmarks.thread_server import ThreadServer
from tests.conftest import TrainedModel

QUICK = ["--processes", "1", "--seconds", "1", "--rate", "200"]
COMMANDS = ("run", "saturate", "floors", "memory", "suite", "fuzz", "reloads", "chaos", "soak")
# Libraries no command's parser needs: seconds of CPU at every start when one is imported.
HEAVY = ("sklearn", "scipy", "pandas", "matplotlib")
# `fraud-bench --help`, then each command's, in one process: the packages that loaded.
HELP_SCRIPT = """\
import contextlib, io, sys
from benchmarks.cli import main
for arguments in ([], *([command] for command in sys.argv[1:])):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([*arguments, "--help"])
print(" ".join(sorted({name.partition(".")[0] for name in sys.modules})))
"""


@pytest.fixture(scope="module")
def floor() -> Iterator[ThreadServer]:
    server = ThreadServer(EmptyFloorServicer())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(
    trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two fraud-serve replicas of the champion, shared by the `run` tests (one start each
    instead of three): a run reads a server's CPU and histogram as differences over the
    run, so the calls of an earlier test do not count in it. Each must exit 0 on SIGTERM."""
    logs = tmp_path_factory.mktemp("replica-logs")
    specs = [fraud_serve_spec(f"replica-{n}", trained_model.registry) for n in range(2)]
    with serving(specs[0], logs) as first, serving(specs[1], logs) as second:
        yield first, second


def _report(directory: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((directory / "report.json").read_text())
    return document


def test_run_against_fraud_serve_reports_its_cpu_and_own_latency(
    replicas: tuple[RunningServer, RunningServer],
    trained_model: TrainedModel,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
):
    """Against real fraud-serve: all answered, its CPU and own quantiles reported, charts drawn."""
    server = replicas[0]
    arguments = ["run", "--target", server.target, "--server-pid", str(server.probe.pids[0])]
    arguments += ["--metrics", server.probe.metrics_urls[0], "--run-id", "cli"]
    status = main(
        [*arguments, "--data", str(trained_model.history), "--out", str(tmp_path), *QUICK]
    )

    assert status == 0
    report = _report(tmp_path)
    (measurement,) = report["measurements"]
    assert measurement["statuses"] == {"OK": measurement["latency"]["count"]}
    assert sum(measurement["decisions"].values()) == measurement["latency"]["count"]
    assert measurement["server"]["cpu_us_per_answer"] > 0
    assert measurement["server_latency"]["requests"] == measurement["latency"]["count"]
    assert report["command_line"] == [
        "fraud-bench",
        *arguments,
        "--data",
        str(trained_model.history),
        "--out",
        str(tmp_path),
        *QUICK,
    ]
    assert {"date", "commit", "cpu", "cores"} <= report["run"].keys()
    assert capsys.readouterr().out.splitlines()[3].startswith("run ")
    assert (tmp_path / "spectrum.png").stat().st_size > 0
    assert (tmp_path / "timeline-run.png").stat().st_size > 0


def test_run_against_several_replicas_balances_the_calls_and_sums_their_cpu(
    replicas: tuple[RunningServer, RunningServer], trained_model: TrainedModel, tmp_path: Path
):
    """Several replicas' addresses, comma-separated: every call answered, each replica
    doing a share of the work, the server CPU summed over their process ids."""
    before = [psutil.Process(server.probe.pids[0]).cpu_times() for server in replicas]
    arguments = ["run", "--target", ",".join(server.target for server in replicas)]
    for server in replicas:
        arguments += ["--server-pid", str(server.probe.pids[0])]
    status = main(
        [*arguments, "--data", str(trained_model.history), "--out", str(tmp_path), *QUICK]
    )
    after = [psutil.Process(server.probe.pids[0]).cpu_times() for server in replicas]

    assert status == 0
    (measurement,) = _report(tmp_path)["measurements"]
    assert measurement["statuses"] == {"OK": measurement["latency"]["count"]}
    used = [b.user + b.system - a.user - a.system for a, b in zip(before, after, strict=True)]
    assert min(used) > 0.2 * max(used), used  # both did a share, not one of them all
    assert measurement["server"]["cpu_us_per_answer"] > 0


def test_floors_measures_onnx_alone_and_both_floor_servers(
    trained_model: TrainedModel, tmp_path: Path
):
    """`floors` times inference alone and loads the empty and ONNX floor servers it starts,
    the ONNX one in a closed loop too."""
    arguments = ["floors", "--registry", str(trained_model.registry), "--onnx-calls", "300"]
    arguments += ["--data", str(trained_model.history), "--out", str(tmp_path), *QUICK]

    assert main(arguments) == 0

    report = _report(tmp_path)
    names = [m["name"] for m in report["measurements"]]
    assert names == ["floor-empty", "floor-onnx", "floor-onnx-closed"]
    assert all(m["server"]["cpu_us_per_answer"] > 0 for m in report["measurements"])
    assert report["onnx_alone"]["calls"] == 300


def test_saturate_steps_up_to_the_highest_rate_held(
    floor: ThreadServer, small_history: Path, tmp_path: Path
):
    """Against a fast server and a loose budget, every step holds up to the last rate."""
    arguments = ["saturate", "--target", floor.target, "--data", str(small_history)]
    arguments += ["--out", str(tmp_path), "--processes", "1", "--seconds", "0.5"]

    status = main(
        [*arguments, "--start", "100", "--step", "100", "--max-rate", "300", "--budget-ms", "5000"]
    )

    assert status == 0
    saturation = _report(tmp_path)["saturation"]
    assert [step["rate"] for step in saturation["steps"]] == [100, 200, 300]
    assert saturation["highest_held_rate"] == 300
    assert (tmp_path / "saturation.png").stat().st_size > 0


def test_memory_runs_in_a_fresh_process(trained_model: TrainedModel, tmp_path: Path):
    """`memory` reports the cards and bytes per card of the days it fed."""
    arguments = ["memory", "--registry", str(trained_model.registry), "--days", "5"]

    assert main([*arguments, "--data", str(trained_model.history), "--out", str(tmp_path)]) == 0

    memory = _report(tmp_path)["memory"]
    assert memory["cards"] > 0
    assert memory["days"] == 5


@pytest.mark.parametrize(
    "arguments",
    [
        ["run", "--target", "10.1.2.3:50051"],
        ["run", "--target", "127.0.0.1:50051", "--metrics", "http://example.com/metrics"],
        ["run", "--target", "127.0.0.1:50051", "--rate", "0"],
        ["run", "--target", "127.0.0.1:50051", "--processes", "99"],
        ["run", "--target", "127.0.0.1:50051", "--outcome-share", "2"],
        ["saturate", "--target", "127.0.0.1:50051", "--start", "900", "--max-rate", "100"],
        ["memory", "--days", "0"],
        ["suite", "--seconds", "1000"],
        ["run", "--target", "127.0.0.1:50051", "--mode", "sideways"],
    ],
)
def test_bad_arguments_exit_with_status_2(arguments: list[str], tmp_path: Path):
    """Off-loopback targets, out-of-bounds settings and unknown choices are usage errors."""
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, "--out", str(tmp_path)])

    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--stream-rates", "5000,fast"], "not rates separated by commas: '5000,fast'"),
        (["--stream-rates", ""], "give at least one ScoreStream rate"),
        (["--batch-rates", "5000,0"], "rate must be in (0, "),
        (["--stream-rates", "5000,nan"], "rate must be in (0, "),
        (["--overload-factor", "1"], "the overload factor must be above 1"),
        (["--overload-seconds", "-1"], "its seconds 0+"),
        (["--mlserver-workers", "9"], "MLServer's parallel workers must be 0 to 8"),
        (["--mlserver-python", "/nonexistent/python"], "not an executable file"),
    ],
)
def test_bad_suite_options_exit_with_status_2_and_say_why(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """Unreadable or out-of-bounds rates, overload and MLServer options are usage errors,
    each with its reason, before anything starts."""
    with pytest.raises(SystemExit) as exit_info:
        main(["suite", *arguments, "--out", str(tmp_path)])

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_run_that_cannot_read_its_data_exits_with_status_1(
    floor: ThreadServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """A missing history file is a failure (status 1) with the reason on stderr."""
    arguments = ["run", "--target", floor.target, "--data", str(tmp_path / "none.csv")]

    assert main([*arguments, "--out", str(tmp_path)]) == 1
    assert "none.csv" in capsys.readouterr().err


def test_help_loads_no_heavy_library():
    """`fraud-bench --help` and every command's --help, in a fresh process, leave sklearn,
    scipy, pandas and matplotlib unimported: the parser needs no command's implementation."""
    script = [sys.executable, "-c", HELP_SCRIPT, *COMMANDS]

    loaded = subprocess.run(script, capture_output=True, text=True, check=True).stdout.split()

    assert [name for name in HEAVY if name in loaded] == []


def test_every_failure_named_is_an_error_class_there():
    """Each error reported as a failure (status 1) by its module and name is an exception
    class of that module, and is caught once the module is imported."""
    for named in cli.FAILURES:
        module, _, name = named.partition(":")
        error = getattr(importlib.import_module(module), name)

        assert issubclass(error, Exception)
        assert error in cli.failures()
