"""Bytes for the records a shared store keeps.

An entity record is its `array('d')` as machine bytes (little-endian doubles on every
platform this runs on). A transaction record is its event time as 8 bytes, so a sweep can
read the age of any record from its first 8 bytes, then its fields and its answer (null
until answered) as a JSON array: one value, so the transaction and its answer are kept,
and dropped, together. A label reported by a ranked caller adds its rank at the end; a
record without one (every record while all callers have rank 0, and every record written
before ranks) reads as rank 0, so stores written by earlier releases read unchanged, and
earlier releases read this one's until a caller is given a rank.
"""

from __future__ import annotations

import hashlib
import struct
from array import array
from typing import Any

import orjson

from service.core.domain import (
    Decision,
    DecisionSource,
    EntryMode,
    FallbackReason,
    Reason,
    ScoreResult,
    Transaction,
)
from service.features.state import TransactionRecord

_TIME = struct.Struct("<d")


def record_key(identifier: str, max_bytes: int) -> bytes:
    """The key of an id: its UTF-8 bytes, or, beyond `max_bytes`, a NUL and its 32-byte
    digest (no UTF-8 text starts with NUL, so the two never meet)."""
    raw = identifier.encode()
    if len(raw) <= max_bytes:
        return raw
    return b"\0" + hashlib.blake2b(raw, digest_size=32).digest()


def record_time(value: bytes | memoryview) -> float:
    """The event time at the start of any stored record: an entity's latest, or a
    transaction's own."""
    return float(_TIME.unpack_from(value)[0])


def encode_entity(record: array[float]) -> bytes:
    return record.tobytes()


def decode_entity(value: bytes | memoryview) -> array[float]:
    record = array("d")
    record.frombytes(value)
    return record


def encode_transaction(record: TransactionRecord) -> bytes:
    tx = record.transaction
    answer = record.answer
    fields = [
        [*tx[:7], int(tx.entry_mode), tx.currency, tx.country, tx.card_present],
        record.terminal_tile,
        record.merchant_tile,
        record.is_fraud,
        None if answer is None else _answer_fields(answer),
    ]
    if record.label_rank:
        fields.append(record.label_rank)
    return _TIME.pack(tx.timestamp) + orjson.dumps(fields)


def decode_transaction(value: bytes | memoryview) -> TransactionRecord:
    tx_fields, terminal_tile, merchant_tile, is_fraud, answer, *ranked = orjson.loads(
        value[_TIME.size :]
    )
    tx_id, timestamp, card, terminal, amount, merchant, mcc, mode, currency, country, present = (
        tx_fields
    )
    tx = Transaction(
        tx_id,
        timestamp,
        card,
        terminal,
        amount,
        merchant,
        mcc,
        EntryMode(mode),
        currency,
        country,
        present,
    )
    return TransactionRecord(
        tx,
        terminal_tile,
        merchant_tile,
        is_fraud,
        None if answer is None else _answer(tx_id, answer),
        ranked[0] if ranked else 0,
    )


def _answer_fields(answer: ScoreResult) -> list[Any]:
    # The rule that decided is appended only when one did: an answer of the model or the
    # fallback keeps the six fields a process of an earlier release reads.
    rule = [answer.rule_id, answer.rules_version] if answer.rule_id else []
    return [
        answer.score,
        int(answer.decision),
        [[reason.code, reason.feature, reason.contribution] for reason in answer.reasons],
        answer.model_version,
        int(answer.source),
        None if answer.fallback_reason is None else str(answer.fallback_reason),
        *rule,
    ]


def _answer(transaction_id: str, fields: list[Any]) -> ScoreResult:
    score, decision, reasons, version, source, fallback = fields[:6]
    rule_id, rules_version = fields[6:8] if len(fields) >= 8 else ("", "")
    return ScoreResult(
        transaction_id,
        score,
        Decision(decision),
        tuple(Reason(code, feature, contribution) for code, feature, contribution in reasons),
        version,
        DecisionSource(source),
        None if fallback is None else FallbackReason(fallback),
        rule_id,
        rules_version,
    )
