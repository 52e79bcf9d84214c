"""`training.model_build.pipeline.train`: what a trained model records about where it came from."""

from __future__ import annotations

from service.model.artifact import sha256_file
from service.model.registry import Registry
from tests.conftest import TrainedModel
from tests.training.second_version import SecondVersion
from training.data.loading import load_transactions


def test_train_records_its_lineage(trained_model: TrainedModel) -> None:
    """A first model's lineage: kind train, its history's window, file and frauds, its gates."""
    manifest = Registry(trained_model.registry).load(trained_model.version)
    lineage = manifest.lineage
    assert lineage is not None
    assert (lineage.kind, lineage.parent_version, lineage.as_of, lineage.trigger) == (
        "train",
        None,
        None,
        None,
    )
    assert lineage.comparison is None
    assert (lineage.data_start, lineage.data_end) == (
        manifest.training_data.first_event,
        manifest.training_data.last_event,
    )
    (source,) = lineage.sources
    frauds = int(load_transactions(trained_model.history).frame["is_fraud"].sum())
    assert (source.name, source.rows, source.frauds, source.sha256) == (
        trained_model.history.name,
        manifest.training_data.rows,
        frauds,
        sha256_file(trained_model.history),
    )
    assert lineage.gates == manifest.gates


def test_train_names_the_champion_as_parent(
    trained_model: TrainedModel, second_version: SecondVersion
) -> None:
    """A model trained where a champion serves records that champion as its parent."""
    manifest = Registry(second_version.registry).load(second_version.version)
    assert manifest.parent_version == trained_model.version
    assert manifest.lineage is not None
    assert manifest.lineage.parent_version == trained_model.version
