"""The model lifecycle of a running `fraud-serve` process under continuous load from another
process: swaps, rollback, refused artifacts and the shadow challenger, with every answer
checked against the score its model version gives the same transaction's features.

The load driver sends a history's swipes one at a time and in order, so replaying the same
requests through a local feature engine gives each answer's exact feature vector.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import grpc
import onnx
import psutil
import pytest

from service.config.settings import DEVELOPMENT_CARD_TOKEN_KEY
from service.core.card_tokens import CardTokenizer
from service.core.validation import ScoringLimits, to_transaction
from service.features import FEATURES, FeatureEngine
from service.grpc_api._proto.fraud.v1 import admin_pb2, admin_pb2_grpc
from service.grpc_api.converters import to_raw_transaction
from service.model.artifact import MANIFEST_FILE, NATIVE_MODEL_FILE, ONNX_MODEL_FILE
from service.model.onnx_scorer import OnnxScorer
from service.model.registry import CHALLENGER, CHAMPION, Registry
from service.model.signatures import SIGNATURE_FILE
from service.model.store import ModelStore
from tests.conftest import TrainedModel
from tests.factories import flip_first_byte
from tests.load_driver import DriverRun, history_requests, start_driver
from tests.metrics_scrape import scrape, value
from tests.server_process import ServerProcess
from tests.service.registry_copies import edit_manifest, point_alias, replace_file, set_thresholds
from training.registry.publishing import promote, promote_challenger, rollback, sign
from training.registry.signing import generate_key_pair, write_signature

ADMIN_TOKEN = "hot-reload-test-admin-token"
WAIT_SECONDS = 90.0  # bound on any wait for the server to follow the registry
SWAPS = 22
# Answers needed on each side of a comparison for its agreement rate to mean something.
SHADOW_SAMPLE = 200

Edit = Callable[[Path], None]


@pytest.fixture
def registry(trained_model: TrainedModel, other_model: TrainedModel, tmp_path: Path) -> Path:
    """A registry holding the trained champion and, published beside it, the other model."""
    root = Path(shutil.copytree(trained_model.registry, tmp_path / "models"))
    source = Registry(other_model.registry).artifact_dir(other_model.version)
    _publish(root, source, other_model.version)
    return root


@pytest.fixture
def serve(
    start_process: Callable[..., ServerProcess], registry: Path
) -> Callable[..., tuple[str, str]]:
    """Start fraud-serve on `registry`, polling it every 50 ms, with more settings in the
    environment if given; its target and metrics URL."""

    def start(environment: dict[str, str] | None = None) -> tuple[str, str]:
        process = start_process(
            "--registry", str(registry), "--host", "127.0.0.1", "--port", "0",
            "--metrics-port", "0",
            environment={
                "FRAUD_MODELS__POLL_SECONDS": "0.05",
                "FRAUD_ADMIN__TOKEN": ADMIN_TOKEN,
                "FRAUD_LOGGING__SAMPLE_RATE": "0",
                # Model answers only, however busy the shared test machine: a fallback has
                # no version to check. Latency during swaps is measured in benchmarks/.
                "FRAUD_BUDGET__SERVER_BUDGET_MS": "5000",
                **(environment or {}),
            },
        )  # fmt: skip
        serving = process.wait_for("serving")
        return f"127.0.0.1:{serving['port']}", f"http://127.0.0.1:{serving['metrics_port']}/metrics"

    return start


@pytest.fixture
def driver(tmp_path: Path, trained_model: TrainedModel) -> Iterator[Callable[[str], DriverRun]]:
    """Start the load driver on a target; stopped after the test if still running."""
    runs: list[DriverRun] = []

    def start(target: str) -> DriverRun:
        run = start_driver(target, trained_model.history, "hot-", tmp_path / "answers.jsonl")
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.stop.set()
        run.process.join(30)
        if run.process.is_alive():
            run.process.kill()


def test_swaps_and_a_rollback_under_load_fail_no_request(
    serve: Callable[[], tuple[str, str]],
    driver: Callable[[str], DriverRun],
    registry: Path,
    trained_model: TrainedModel,
    other_model: TrainedModel,
) -> None:
    """22 promotions back and forth, then a rollback: every answer comes from a published
    version and carries that version's own score for the transaction's features."""
    target, _metrics = serve()
    admin = _Admin(target)
    load = driver(target)
    first, second = trained_model.version, other_model.version
    for swap in range(SWAPS):
        version = second if swap % 2 == 0 else first
        promote(registry, version, reason=f"swap {swap}")
        admin.wait_until(lambda models, v=version: models.serving_version == v)  # type: ignore[misc]
    assert rollback(registry, reason="bad canary") == second  # the champion was `first`
    admin.wait_until(lambda models: models.serving_version == second)
    load.wait_for_answers(200)

    answers = load.finish()
    by_version = _check_every_answer(
        answers, registry, trained_model.history, [first, second], scores_differ=True
    )
    assert set(by_version) == {first, second}
    assert min(by_version.values()) >= 50


BAD_ARTIFACTS: list[tuple[str, str]] = [
    ("truncated_onnx", "invalid_onnx"),
    ("random_bytes_onnx", "invalid_onnx"),
    ("checksum_mismatch", "checksum_mismatch"),
    ("missing_manifest", "missing_manifest"),
    ("wrong_feature_list", "feature_contract"),
    ("parity_failure", "golden_mismatch"),
    ("library_major_version", "library_mismatch"),
    ("half_copied_directory", "checksum_mismatch"),
    ("unpublished_version", "registry_error"),
]


def test_bad_artifacts_published_under_load_are_refused(
    serve: Callable[[], tuple[str, str]],
    driver: Callable[[str], DriverRun],
    registry: Path,
    trained_model: TrainedModel,
) -> None:
    """Each kind of broken artifact the champion alias is pointed at is refused with its
    reason, counted, and the old model answers every request meanwhile."""
    target, metrics_url = serve()
    admin = _Admin(target)
    load = driver(target)
    source = Registry(registry).artifact_dir(trained_model.version)
    for number, (kind, reason) in enumerate(BAD_ARTIFACTS):
        version = f"20990101T0000{number:02d}Z-badc0de{number}"
        _BAD_ARTIFACT_MAKERS[kind](registry, source, version)
        refusal = _refused_as_champion(registry, admin, version, trained_model.version)
        assert (kind, refusal.alias, refusal.reason) == (kind, CHAMPION, reason)
    _only_the_champion_answered(
        registry, admin, load, trained_model, metrics_url, [reason for _, reason in BAD_ARTIFACTS]
    )


# A server that trusts `release` and `revoked` (whose id it also revokes), with a file cap
# the default model fits and the padded version does not.
SIGNED_MAX_FILE_BYTES = 8 * 1024 * 1024
_KEYS = ("release", "stranger", "revoked")

# Each kind of untrusted artifact, the key its manifest is signed with (None: unsigned), and
# the refusal it gets. The edits after signing are what a person with write access to the
# registry volume could do; the others are signed by the trusted key, so only the check
# named by the reason can stop them.
TRUST_CASES: list[tuple[str, str | None, str]] = [
    ("edited_thresholds", "release", "bad_signature"),
    ("edited_feature_list", "release", "bad_signature"),
    ("edited_golden_sample", "release", "bad_signature"),
    ("file_swapped_after_signing", "release", "checksum_mismatch"),
    ("unsigned", None, "unsigned"),
    ("signed_by_unknown_key", "stranger", "unknown_key"),
    ("signed_by_revoked_key", "revoked", "revoked_key"),
    ("operator_outside_allow_list", "release", "onnx_not_allowed"),
    ("external_data", "release", "external_data"),
    ("oversized_file", "release", "file_too_large"),
    ("symlink", "release", "symlink"),
    ("truncated_after_signing", "release", "checksum_mismatch"),
]


def test_untrusted_artifacts_promoted_under_load_are_refused(
    serve: Callable[..., tuple[str, str]],
    driver: Callable[[str], DriverRun],
    registry: Path,
    trained_model: TrainedModel,
    other_model: TrainedModel,
    tmp_path: Path,
) -> None:
    """A server that trusts a signing key refuses each of twelve untrusted artifacts the
    champion alias is pointed at, with its reason, while the signed model answers every
    call; the refusals are counted by reason."""
    keys = {name: generate_key_pair(tmp_path / "keys", name)[0] for name in _KEYS}
    sign(registry, trained_model.version, keys["release"])
    target, metrics_url = serve(
        {
            "FRAUD_MODELS__TRUSTED_KEYS": json.dumps(
                [keys["release"].public_text, keys["revoked"].public_text]
            ),
            "FRAUD_MODELS__REVOKED_KEYS": json.dumps([keys["revoked"].key_id]),
            "FRAUD_MODELS__MAX_FILE_BYTES": str(SIGNED_MAX_FILE_BYTES),
        }
    )
    admin = _Admin(target)
    load = driver(target)
    source = Registry(registry).artifact_dir(trained_model.version)
    other_onnx = (
        Registry(registry).artifact_dir(other_model.version) / ONNX_MODEL_FILE
    ).read_bytes()
    for number, (kind, key, reason) in enumerate(TRUST_CASES):
        version = f"20990102T0000{number:02d}Z-5164ed{number:02d}"
        before, after = _UNTRUSTED_EDITS[kind]
        artifact = _publish(registry, source, version, before)
        (artifact / SIGNATURE_FILE).unlink()  # the copied champion's, for another manifest
        if key is not None:
            write_signature(artifact, keys[key])
        if after is not None:
            after(artifact, other_onnx, tmp_path)
        refusal = _refused_as_champion(registry, admin, version, trained_model.version)
        assert (kind, refusal.reason) == (kind, reason), refusal.detail
    _only_the_champion_answered(
        registry, admin, load, trained_model, metrics_url, [reason for *_, reason in TRUST_CASES]
    )


def _refused_as_champion(
    registry: Path, admin: _Admin, version: str, serving: str
) -> admin_pb2.Refusal:
    """Point the champion alias at `version` by hand (the registry's writer would check it)
    and return the server's refusal of it; `serving` must still be served."""
    point_alias(registry, CHAMPION, version)
    models = admin.wait_until(
        lambda models: any(refusal.version == version for refusal in models.refusals)
    )
    (refusal,) = models.refusals
    assert models.serving_version == serving
    return refusal


def _only_the_champion_answered(
    registry: Path,
    admin: _Admin,
    load: DriverRun,
    trained_model: TrainedModel,
    metrics_url: str,
    reasons: list[str],
) -> None:
    """The champion alias back on the trained model: every answer the load got was that
    model's, and the server counted a refusal for each of `reasons`."""
    point_alias(registry, CHAMPION, trained_model.version)
    admin.wait_until(lambda models: not models.refusals)
    load.wait_for_answers(100)
    answers = load.finish()
    by_version = _check_every_answer(
        answers, registry, trained_model.history, [trained_model.version]
    )
    assert set(by_version) == {trained_model.version}
    samples = scrape(metrics_url)
    for reason, count in Counter(reasons).items():
        refusals = value(samples, "fraud_model_refusals_total", alias=CHAMPION, reason=reason)
        assert refusals == count, reason


def test_the_shadow_challenger_agreement_follows_the_challenger(
    serve: Callable[[], tuple[str, str]],
    driver: Callable[[str], DriverRun],
    registry: Path,
    trained_model: TrainedModel,
    other_model: TrainedModel,
) -> None:
    """A similar challenger agrees with the champion on most decisions, one that declines
    everything on few; answers are unchanged by either, and promoting the challenger is
    one call after which it decides and the shadow stops."""
    target, metrics_url = serve()
    admin = _Admin(target)
    load = driver(target)
    champion = trained_model.version
    decline_all = "20990101T000000Z-dec11eae"
    _publish(
        registry,
        Registry(registry).artifact_dir(champion),
        decline_all,
        lambda artifact: set_thresholds(artifact, review=0.0, decline=0.0),
    )

    promote(registry, other_model.version, alias=CHALLENGER, reason="similar model")
    admin.wait_until(lambda models: models.challenger_version == other_model.version)
    similar = _agreement_over(metrics_url, SHADOW_SAMPLE)
    promote(registry, decline_all, alias=CHALLENGER, reason="declines everything")
    admin.wait_until(lambda models: models.challenger_version == decline_all)
    contrary = _agreement_over(metrics_url, SHADOW_SAMPLE)
    assert similar > 0.8
    assert contrary < 0.2

    assert promote_challenger(registry, reason="the shadow says so") == decline_all
    admin.wait_until(lambda models: models.serving_version == decline_all)
    load.wait_for_answers(100)
    compared = _agreement_counts(metrics_url)
    load.wait_for_answers(100)
    assert _agreement_counts(metrics_url) == compared  # a model is not compared with itself

    answers = load.finish()
    by_version = _check_every_answer(
        answers, registry, trained_model.history, [champion, decline_all]
    )
    assert set(by_version) == {champion, decline_all}
    promoted = [answer for answer in answers if answer["model_version"] == decline_all]
    assert {answer["decision"] for answer in promoted} == {"DECISION_DECLINE"}


def test_memory_after_100_reloads_stays_within_8_mib_of_memory_after_10(
    registry: Path, trained_model: TrainedModel, other_model: TrainedModel
) -> None:
    """Reloading between two versions releases the old sessions: resident memory after 100
    swaps is within 8 MiB of what it was after 10 (measured in a fresh process)."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        after = pool.submit(
            resident_memory_after_swaps,
            registry,
            (trained_model.version, other_model.version),
            (10, 100),
        ).result(timeout=600)
    assert after[100] - after[10] <= 8 * 2**20, after


def resident_memory_after_swaps(
    registry: Path, versions: tuple[str, str], checkpoints: Iterable[int]
) -> dict[int, int]:
    """Resident set size (bytes) after each checkpoint's number of champion swaps, each a
    full load of the other version through `ModelStore.refresh`."""
    store = ModelStore(registry)
    store.load_champion()
    sizes: dict[int, int] = {}
    swaps = 0
    for checkpoint in sorted(checkpoints):
        while swaps < checkpoint:
            point_alias(registry, CHAMPION, versions[swaps % 2])
            report = store.refresh()
            assert not report.refusals, report
            swaps += 1
        gc.collect()
        sizes[checkpoint] = psutil.Process().memory_info().rss
    return sizes


# --- artifacts -------------------------------------------------------------------------------


def _publish(root: Path, source: Path, version: str, edit: Edit | None = None) -> Path:
    """Publish a copy of `source` as `version` the way the registry does: complete aside,
    then renamed into place."""
    staging = Path(shutil.copytree(source, root / ".staging" / version))
    edit_manifest(staging, lambda manifest: manifest.update(version=version))
    if edit is not None:
        edit(staging)
    target = root / "versions" / version
    staging.rename(target)
    return target


def _truncate_onnx(artifact: Path) -> None:
    content = (artifact / ONNX_MODEL_FILE).read_bytes()
    replace_file(artifact, ONNX_MODEL_FILE, content[: len(content) // 2])


def _random_onnx(artifact: Path) -> None:
    replace_file(artifact, ONNX_MODEL_FILE, os.urandom(64 * 1024))


def _swap_two_features(artifact: Path) -> None:
    def swap(manifest: dict[str, Any]) -> None:
        features = manifest["features"]
        features[0], features[1] = features[1], features[0]

    edit_manifest(artifact, swap)


def _shift_golden_scores(artifact: Path) -> None:
    def shift(manifest: dict[str, Any]) -> None:
        scores = manifest["golden_sample"]["scores"]
        manifest["golden_sample"]["scores"] = [min(score + 1e-3, 1.0) for score in scores]

    edit_manifest(artifact, shift)


def _old_onnxruntime(artifact: Path) -> None:
    edit_manifest(artifact, lambda manifest: manifest["libraries"].update(onnxruntime="0.9.0"))


def _half_copy(root: Path, source: Path, version: str) -> None:
    """A copy into the registry's versions directory itself, killed halfway through the
    native model: the manifest and the files before it in name order are complete."""
    target = root / "versions" / version
    target.mkdir()
    for path in sorted(source.iterdir()):
        content = path.read_bytes()
        if path.name == NATIVE_MODEL_FILE:
            (target / path.name).write_bytes(content[: len(content) // 2])
            break
        (target / path.name).write_bytes(content)
    edit_manifest(target, lambda manifest: manifest.update(version=version))


def _published_with(edit: Edit) -> Callable[[Path, Path, str], None]:
    def make(root: Path, source: Path, version: str) -> None:
        _publish(root, source, version, edit)

    return make


def _without_manifest(root: Path, source: Path, version: str) -> None:
    _publish(root, source, version, lambda artifact: (artifact / MANIFEST_FILE).unlink())


def _nothing_published(_root: Path, _source: Path, _version: str) -> None:
    """The alias names a version that was never published."""


_BAD_ARTIFACT_MAKERS: dict[str, Callable[[Path, Path, str], None]] = {
    "truncated_onnx": _published_with(_truncate_onnx),
    "random_bytes_onnx": _published_with(_random_onnx),
    "checksum_mismatch": _published_with(lambda a: flip_first_byte(a / NATIVE_MODEL_FILE)),
    "missing_manifest": _without_manifest,
    "wrong_feature_list": _published_with(_swap_two_features),
    "parity_failure": _published_with(_shift_golden_scores),
    "library_major_version": _published_with(_old_onnxruntime),
    "half_copied_directory": _half_copy,
    "unpublished_version": _nothing_published,
}


AfterSigning = Callable[[Path, bytes, Path], None]


def _with_graph(edit: Callable[[onnx.ModelProto], None]) -> Edit:
    """An edit that changes the ONNX graph and re-hashes it, as a signer would have seen."""

    def change(artifact: Path) -> None:
        model = onnx.load_from_string((artifact / ONNX_MODEL_FILE).read_bytes())
        edit(model)
        replace_file(artifact, ONNX_MODEL_FILE, model.SerializeToString())

    return change


def _add_foreign_operator(model: onnx.ModelProto) -> None:
    model.graph.node.append(onnx.helper.make_node("Exp", [model.graph.input[0].name], ["exp"]))


def _add_external_tensor(model: onnx.ModelProto) -> None:
    tensor = onnx.helper.make_tensor("external", onnx.TensorProto.FLOAT, [1], [0.0])
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../../../etc/hostname"
    model.graph.initializer.append(tensor)


def _add_padding(artifact: Path) -> None:
    replace_file(artifact, "padding.bin", b"\0" * (SIGNED_MAX_FILE_BYTES + 1))


def _swap_onnx(artifact: Path, other_onnx: bytes, _outside: Path) -> None:
    (artifact / ONNX_MODEL_FILE).write_bytes(other_onnx)


def _truncate_onnx_only(artifact: Path, _other_onnx: bytes, _outside: Path) -> None:
    content = (artifact / ONNX_MODEL_FILE).read_bytes()
    (artifact / ONNX_MODEL_FILE).write_bytes(content[: len(content) // 2])


def _link_a_report(artifact: Path, _other_onnx: bytes, outside: Path) -> None:
    """Replace a report with a link to an identical copy outside the registry."""
    report = artifact / "evaluation.json"
    copy = outside / f"{artifact.name}-evaluation.json"
    copy.write_bytes(report.read_bytes())
    report.unlink()
    report.symlink_to(copy)


def _after_signing(edit: Edit) -> AfterSigning:
    return lambda artifact, _other_onnx, _outside: edit(artifact)


# kind: (edit before signing, edit after signing)
_UNTRUSTED_EDITS: dict[str, tuple[Edit | None, AfterSigning | None]] = {
    "edited_thresholds": (
        None,
        _after_signing(lambda a: set_thresholds(a, review=1.0, decline=1.0)),
    ),
    "edited_feature_list": (None, _after_signing(_swap_two_features)),
    "edited_golden_sample": (None, _after_signing(_shift_golden_scores)),
    "file_swapped_after_signing": (None, _swap_onnx),
    "unsigned": (None, None),
    "signed_by_unknown_key": (None, None),
    "signed_by_revoked_key": (None, None),
    "operator_outside_allow_list": (_with_graph(_add_foreign_operator), None),
    "external_data": (_with_graph(_add_external_tensor), None),
    "oversized_file": (_add_padding, None),
    "symlink": (None, _link_a_report),
    "truncated_after_signing": (None, _truncate_onnx_only),
}


# --- the server, seen from outside ------------------------------------------------------------


class _Admin:
    """The server's ModelAdmin service, with the token."""

    def __init__(self, target: str) -> None:
        self._stub = admin_pb2_grpc.ModelAdminStub(grpc.insecure_channel(target))
        self._metadata = (("authorization", f"Bearer {ADMIN_TOKEN}"),)

    def models(self) -> admin_pb2.ListModelsResponse:
        return self._stub.ListModels(
            admin_pb2.ListModelsRequest(), metadata=self._metadata, timeout=10
        )

    def wait_until(
        self, condition: Callable[[admin_pb2.ListModelsResponse], bool]
    ) -> admin_pb2.ListModelsResponse:
        """The first listing that meets `condition`, polled until WAIT_SECONDS pass."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            models = self.models()
            if condition(models):
                return models
            time.sleep(0.02)
        raise AssertionError(f"the server did not get there; it reports:\n{self.models()}")


def _agreement_counts(metrics_url: str) -> tuple[float, float]:
    samples = scrape(metrics_url)
    name = "fraud_shadow_comparisons_total"
    return value(samples, name, agreement="agree"), value(samples, name, agreement="disagree")


def _agreement_over(metrics_url: str, comparisons: int) -> float:
    """The agreement rate over the next `comparisons` shadow comparisons."""
    agreed, disagreed = _agreement_counts(metrics_url)
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        now_agreed, now_disagreed = _agreement_counts(metrics_url)
        total = (now_agreed - agreed) + (now_disagreed - disagreed)
        if total >= comparisons:
            return (now_agreed - agreed) / total
        time.sleep(0.05)
    raise AssertionError(f"fewer than {comparisons} shadow comparisons in {WAIT_SECONDS} s")


def _check_every_answer(
    answers: list[dict[str, Any]],
    registry: Path,
    history: Path,
    versions: list[str],
    *,
    scores_differ: bool = False,
) -> Counter[str]:
    """Every answer is the model's, from one of `versions`, with that version's score for
    the features the server computed; how many answers each version gave.

    With `scores_differ`, most answers must also tell the versions apart (each gives
    another score), or the check would prove little.
    """
    assert answers, "the driver got no answer"
    store = Registry(registry)
    scorers = {
        version: OnnxScorer(store.artifact_dir(version) / ONNX_MODEL_FILE, len(FEATURES))
        for version in versions
    }
    engine = FeatureEngine(store.load(versions[0]).feature_config)
    tokenizer = CardTokenizer(DEVELOPMENT_CARD_TOKEN_KEY.encode())
    limits = ScoringLimits()
    by_version: Counter[str] = Counter()
    telling_apart = 0
    requests = history_requests(history, "hot-")
    for request, answer in zip(requests, answers, strict=False):
        assert answer["code"] == "OK", answer
        assert answer["source"] == "DECISION_SOURCE_MODEL", answer
        assert answer["transaction_id"] == request.transaction.transaction_id
        version = answer["model_version"]
        assert version in scorers, answer
        raw = to_raw_transaction(request)
        tx = to_transaction(raw, limits=limits, tokenizer=tokenizer)
        features = engine.observe(tx)
        scores = {name: scorer.score_one(features) for name, scorer in scorers.items()}
        assert answer["score"] == scores[version], answer
        by_version[version] += 1
        telling_apart += len(set(scores.values())) == len(scores)
    if scores_differ:
        assert telling_apart > len(answers) // 2, (telling_apart, len(answers))
    return by_version
