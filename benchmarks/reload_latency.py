"""What hot reloads cost the requests in flight: open-loop latency without and with swaps,
against one `fraud-serve`, in one run.

    python -m benchmarks.reload_latency --registry models [--other VERSION] \\
        --data data/transactions.csv --rate 500 --seconds 20 --swap-every 1 --out DIR

The registry is copied to a temporary directory (the promotions never touch yours); its
champion and `--other`, another published version of the same features (by default the
champion's artifact published again under another name), are swapped.
One server is started on it, polling the registry every 0.1 s. Two measurements follow,
each with fresh transaction ids: a steady open loop at `--rate` for `--seconds`, then the
same while a thread promotes the two versions in turn every `--swap-every` seconds (each
promotion is a full load: checks, golden replay, warm-up). Latency is from each call's
due time (no coordinated omission). Prints the table and writes `report.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.load.traffic import NO_OUTCOMES, build_calls, load_history, new_run_id
from benchmarks.measurements.load_run import LoadSettings, Measurement, measure
from benchmarks.probes.machine import describe_run
from benchmarks.reporting.report import Report, render_table, write_json
from benchmarks.servers.launch import fraud_serve_spec, serving
from service.model.artifact import MANIFEST_FILE, read_manifest
from service.model.registry import CHAMPION, Registry
from training.registry.publishing import finalise, promote, stage

POLL_SECONDS = "0.1"


def main(argv: Sequence[str] | None = None) -> int:
    """Run both measurements; exit status 0, or 2 for bad arguments."""
    args = _parser().parse_args(argv)
    command_line = [
        "python",
        "-m",
        "benchmarks.reload_latency",
        *(argv or sys.argv[1:]),
    ]
    with tempfile.TemporaryDirectory(prefix="fraud-bench-reload-") as scratch:
        registry = Path(shutil.copytree(args.registry, Path(scratch) / "models"))
        champion = Registry(registry).alias(CHAMPION)
        if champion is None:
            raise SystemExit(f"{args.registry} has no champion")
        other = args.other or republished(registry, champion)
        if other == champion:
            raise SystemExit("--other must name another version than the champion")
        Registry(registry).artifact_dir(other)  # RegistryError if not published
        measurements, swaps = _measure(args, registry, (champion, other))
    report = Report(
        command="reload_latency",
        run=describe_run(),
        command_line=command_line,
        settings={
            "rate": args.rate,
            "seconds": args.seconds,
            "swap_every": args.swap_every,
            "swaps": swaps,
            "versions": [champion, other],
        },
        measurements=measurements,
    )
    print(render_table(report))
    print(f"swaps during the second measurement: {swaps}")
    print(f"wrote {write_json(report, args.out)}")
    return 0


def _measure(
    args: argparse.Namespace, registry: Path, versions: tuple[str, str]
) -> tuple[list[Measurement], int]:
    history = load_history(args.data, 2 * round(args.rate * args.seconds))
    spec = fraud_serve_spec("fraud-serve", registry)
    spec = dataclasses.replace(
        spec, environment=spec.environment | {"FRAUD_MODELS__POLL_SECONDS": POLL_SECONDS}
    )
    with serving(spec, args.out / "logs") as server:
        load = LoadSettings(
            target=server.target,
            mode="open",
            rpc="unary",
            seconds=args.seconds,
            rate=args.rate,
            processes=args.processes,
        )
        calls = load.calls_needed()
        steady = measure(
            "steady", load, build_calls(history, new_run_id(), NO_OUTCOMES, 0, calls), server.probe
        )
        with _swapping(registry, versions, args.swap_every) as swaps:
            swapping = measure(
                "swapping",
                load,
                build_calls(history, new_run_id(), NO_OUTCOMES, calls, calls),
                server.probe,
            )
    return [steady, swapping], len(swaps)


def republished(registry: Path, champion: str) -> str:
    """The champion's artifact published again, through the registry's own publish, under
    a new version name: a swap to it is the same work as to any other model (checks,
    load, golden replay, warm-up)."""
    source = Registry(registry).artifact_dir(champion)
    manifest = read_manifest(source)
    # A version is named by its creation second: the copy must not share the champion's.
    created = max(datetime.now(UTC), manifest.created_at + timedelta(seconds=1))
    with stage(registry) as staging:
        for path in source.iterdir():
            if path.name != MANIFEST_FILE:
                shutil.copy2(path, staging / path.name)
        copy = manifest.model_copy(update={"version": "", "created_at": created})
        return finalise(registry, staging, copy).name


@contextmanager
def _swapping(registry: Path, versions: tuple[str, str], every: float) -> Iterator[list[str]]:
    """Promote the versions in turn every `every` seconds while the context lasts."""
    done = threading.Event()
    promoted: list[str] = []

    def swap() -> None:
        while not done.wait(every):
            version = versions[(len(promoted) + 1) % 2]
            promote(registry, version, reason="reload latency benchmark")
            promoted.append(version)

    thread = threading.Thread(target=swap, name="swapper", daemon=True)
    thread.start()
    try:
        yield promoted
    finally:
        done.set()
        thread.join()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reload_latency",
        description="Open-loop latency of one fraud-serve without and with hot reloads.",
    )
    parser.add_argument("--registry", type=Path, default=Path("models"))
    parser.add_argument(
        "--other",
        help="a published version to swap with (default: a copy of the champion under a new name)",
    )
    parser.add_argument("--data", type=Path, default=Path("data/transactions.csv"))
    parser.add_argument("--rate", type=float, default=500.0, help="calls per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    parser.add_argument("--swap-every", type=float, default=1.0, help="seconds between swaps")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--out", type=Path, required=True, help="directory for report.json")
    return parser


if __name__ == "__main__":
    sys.exit(main())
