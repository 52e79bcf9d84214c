"""Tests for service.state.codec's transaction records: a label's rank is written only when
it is not 0, so releases before ranks read the records of this one until a caller is
ranked, and this one reads theirs."""

from __future__ import annotations

import orjson

from service.core.domain import Transaction
from service.features.state import TransactionRecord
from service.state.codec import decode_transaction, encode_transaction

TX = Transaction("tx-1", 1_700_000_000.5, "k1:card", "term-1", 12.5, "m-1")


def test_an_unranked_label_is_written_as_before_ranks() -> None:
    """Rank 0: the five fields of earlier releases, which read back as rank 0."""
    record = TransactionRecord(TX, 3, 4, is_fraud=True)
    encoded = encode_transaction(record)
    assert len(orjson.loads(encoded[8:])) == 5
    assert decode_transaction(encoded) == record


def test_a_ranked_label_reads_back_with_its_rank() -> None:
    """A label reported by a ranked caller keeps its rank through the bytes."""
    record = TransactionRecord(TX, 3, -1, is_fraud=True, label_rank=7)
    encoded = encode_transaction(record)
    assert len(orjson.loads(encoded[8:])) == 6
    assert decode_transaction(encoded) == record
