"""Rule sets and lists signed like models: with trusted keys the server loads only versions
a trusted key signed (`fraud-train` signs with its `signing_key`), refuses the others by
reason and keeps serving what it had; a server that cannot sign refuses to change lists."""

from __future__ import annotations

from pathlib import Path

from service.core.rules import LIST_KINDS
from service.features.engine import FEATURE_NAMES
from service.model.rule_registry import RuleRegistry
from service.model.rule_store import RuleStore
from service.model.rule_writer import publish
from service.model.signatures import SIGNATURE_FILE
from tests.training.cli.fraud_train import exit_code
from training.registry.signing import generate_key_pair, write_signature

BIG = {"field": "amount", "op": ">", "value": 5000}
RULES = {
    "format": 1,
    "rules": [{"id": "big", "action": "decline", "reason_code": "BIG", "when": BIG}],
}


def test_only_versions_a_trusted_key_signed_are_served(tmp_path: Path) -> None:
    """Signed: served. Unsigned, signed by another key, or with a forged signature: refused
    with that reason, the signed version serving on."""
    key, _private, _public = generate_key_pair(tmp_path / "keys", "analysts")
    stranger, _private, _public = generate_key_pair(tmp_path / "keys", "stranger")
    registry = tmp_path / "models"
    store = RuleStore(registry, FEATURE_NAMES, signatures=key.policy)
    trusted = publish(registry, "rules", RULES, feature_names=FEATURE_NAMES, by="ana",
                      reason="signed", sign=lambda d: write_signature(d, key))  # fmt: skip
    assert store.refresh().refusals == []
    assert store.versions["rules"] == trusted
    versions = RuleRegistry(registry, "rules").versions_dir
    signers = {"unsigned": None, "unknown_key": stranger, "bad_signature": key}
    for reason, signer in signers.items():
        sign = None if signer is None else (lambda d, k=signer: write_signature(d, k))
        version = publish(registry, "rules", RULES, feature_names=FEATURE_NAMES,
                          by="mallory", reason=reason, sign=sign)  # fmt: skip
        if reason == "bad_signature":  # a signature copied from another version
            (versions / version / SIGNATURE_FILE).write_bytes(
                (versions / trusted / SIGNATURE_FILE).read_bytes()
            )
        (refusal,) = store.refresh().refusals
        assert (refusal.version, refusal.reason) == (version, reason)
        assert store.versions["rules"] == trusted
    # Without trusted keys (development), the same registry's last version is served.
    assert RuleStore(registry, FEATURE_NAMES).refresh().refusals == []


def test_fraud_train_signs_rule_sets_and_lists_with_its_signing_key(tmp_path: Path) -> None:
    """`rules publish` and `rules list add` sign with `signing_key`; a server trusting the
    key serves both."""
    key, private, _public = generate_key_pair(tmp_path / "keys", "analysts")
    config = tmp_path / "train.toml"
    config.write_text(f'signing_key = "{private}"\n')
    rule_file = tmp_path / "rules.toml"
    rule_file.write_text(
        '[[rules]]\nid = "big"\naction = "decline"\nreason_code = "BIG"\n'
        'when = { field = "amount", op = ">", value = 5000 }\n'
    )
    where = ["--registry", str(tmp_path / "models"), "--config", str(config)]
    publish_args = ["rules", "publish", str(rule_file), "--force", "--reason", "r"]
    assert exit_code([*publish_args, *where]) == 0
    change = ["add", "--list", "block", "--kind", "country", "--value", "KP", "--reason", "r"]
    assert exit_code(["rules", "list", *change, *where]) == 0
    store = RuleStore(tmp_path / "models", FEATURE_NAMES, signatures=key.policy)
    assert store.refresh().refusals == []
    assert store.current is not None
    assert store.current.rules.version
    assert "KP" in store.current.lists.block["country"]
    assert set(store.current.lists.block) == set(LIST_KINDS)
