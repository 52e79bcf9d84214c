"""`fraud-train keys generate`, signed publishing and `registry sign`, as a user runs them."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

from service.model.artifact import MANIFEST_FILE, check_artifact
from service.model.registry import Registry
from service.model.signatures import SIGNATURE_FILE, SignaturePolicy
from tests.conftest import TrainedModel
from tests.factories import flip_first_byte
from tests.training.cli.fraud_train import run
from tests.training.second_version import SecondVersion


def _generate(directory: Path, name: str) -> SignaturePolicy:
    """A new key pair in `directory`; the policy of a server that trusts it."""
    public_text = run("keys", "generate", "--out", directory, "--name", name).stdout.strip()
    assert (directory / f"{name}.pub").read_text(encoding="utf-8").strip() == public_text
    return SignaturePolicy.from_settings([public_text], [])


def test_a_key_pair_is_private_and_never_overwritten(tmp_path: Path) -> None:
    """The private key is readable by its owner only; a second generate under the same
    name fails (exit 2) and leaves the first key as it was."""
    _generate(tmp_path, "release")
    private = tmp_path / "release.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    before = private.read_bytes()
    again = run("keys", "generate", "--out", tmp_path, "--name", "release", check=False)
    assert again.returncode == 2
    assert "never overwritten" in again.stderr
    assert private.read_bytes() == before


def test_training_with_a_signing_key_publishes_a_signed_version(
    second_version: SecondVersion,
) -> None:
    """With FRAUD_TRAIN_SIGNING_KEY set, the published manifest verifies under that key,
    and the manifest does not record where the key lives."""
    policy = SignaturePolicy.from_settings([second_version.public_key], [])
    artifact = Registry(second_version.registry).artifact_dir(second_version.version)
    (signer,) = policy.trusted
    assert check_artifact(artifact, signatures=policy).signer == signer
    manifest = json.loads((artifact / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert "signing_key" not in manifest["training_config"]


def test_registry_sign_signs_a_version_published_unsigned(
    trained_model: TrainedModel, tmp_path: Path
) -> None:
    """`registry sign` adds the signature (recorded in the history) without changing a
    file; a version whose files no longer verify is refused, and stays unsigned."""
    registry = Path(shutil.copytree(trained_model.registry, tmp_path / "models"))
    policy = _generate(tmp_path / "keys", "release")
    artifact = Registry(registry).artifact_dir(trained_model.version)
    files_before = {path.name: path.read_bytes() for path in artifact.iterdir()}
    key = tmp_path / "keys" / "release.key"
    run("registry", "sign", trained_model.version, "--key", key, "--registry", registry)
    assert check_artifact(artifact, signatures=policy).signer in policy.trusted
    assert {path.name: path.read_bytes() for path in artifact.iterdir()} == {
        **files_before,
        SIGNATURE_FILE: (artifact / SIGNATURE_FILE).read_bytes(),
    }
    assert Registry(registry).history()[-1].action == "sign"

    (artifact / SIGNATURE_FILE).unlink()
    flip_first_byte(artifact / "model.lgb.txt")
    refused = run(
        "registry", "sign", trained_model.version, "--key", key, "--registry", registry,
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "refused to sign" in refused.stderr
    assert not (artifact / SIGNATURE_FILE).exists()


def test_registry_sign_needs_a_key(trained_model: TrainedModel, tmp_path: Path) -> None:
    not_a_key = tmp_path / "not.key"
    not_a_key.write_text("hello", encoding="utf-8")
    for arguments, message in (
        ((), "no key to sign with"),
        (("--key", not_a_key), "not an unencrypted PEM key"),
    ):
        result = run(
            "registry", "sign", trained_model.version, *arguments,
            "--registry", trained_model.registry, check=False,
        )  # fmt: skip
        assert result.returncode == 2
        assert message in result.stderr
