"""The one definition of a record line and of segment names, for both sides of the files.

The server writes (`decision_writer`, `outcome_writer`, `segment_log`) and training reads
(`training.retraining.feedback`) the same files, so everything both must agree on is here:

    RecordKind                       the closed set of logs: "decisions", "outcomes" and
                                     "quarantine" (outcomes of transactions the feature
                                     state does not hold, kept apart: `quarantine_writer`)
    DecisionLine, OutcomeLine,       a line as a writer builds it, a TypedDict each: mypy
    QuarantineLine                   rejects a writer that renames, drops or adds a field
    DECISION_SCHEMA, OUTCOME_SCHEMA, the same fields in the order they are written, with the
    QUARANTINE_SCHEMA                JSON types a reader accepts and which ones it requires;
                                     `accepts` is the reader's validation of a decoded line
    segment_name, segment_opened_at, is_segment, segment_glob
                                     `<kind>-<YYYYMMDDTHHMMSSffffffZ>-<host>-<pid>-<seq>.jsonl`
    iso_utc                          how a writer writes a time it holds in Unix seconds

A record log is a directory of segments: JSON-lines files named after the UTC wall time the
segment was opened (so names sort by time), then the writing host and process and its
count of segments (so worker processes sharing a directory never write to the same file,
nor do replicas sharing a volume: in Kubernetes every pod's server may be pid 1, and the
host name is the pod's name). Each line is
one JSON object of its kind's fields. A reader skips a line that is not an object, lacks a
required field, or has a field of a type it does not accept (a descriptive field of another type
reads as not known instead); it ignores fields it does not know, and takes an optional field
that is absent (a line written before the field existed) as its `absent` value: for the
transaction's optional fields, the "not known" values of `service.core.domain.Transaction`.

Times are ISO 8601 in UTC: `iso_utc` writes microseconds always; `event_time` is a UTC
`datetime` that orjson writes itself, leaving out a fraction of a second that is 0.

`tests/service/records/test_schema.py` holds the TypedDicts and the schemas to the same
names in the same order, and writes through the real writers to read through the real
readers. Standard library only: the server's writers and training's reader both import it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, TypedDict, get_args

RecordKind = Literal["decisions", "outcomes", "quarantine"]
"""The logs kept for retraining; each kind is also its segments' name prefix. The
quarantine's segments live in the outcome log's directory, with a budget of their own."""
RECORD_KINDS: tuple[RecordKind, ...] = get_args(RecordKind)

# The JSON types a reader accepts, as the exact types of decoded values: JSON true and
# false decode to bool, a subclass of int, and must not pass for numbers.
TEXT: Final = (str,)
NUMBER: Final = (int, float)
INTEGER: Final = (int,)
FLAG: Final = (bool,)
_NULL: Final = type(None)
# Integers are 64-bit signed: what the writers write and what a reader's columns hold.
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1

_STAMP = "%Y%m%dT%H%M%S%fZ"
# The host part is optional: segments written before it was added are still recognised.
_SEGMENT = re.compile(
    r"(?P<kind>\w+)-(?P<stamp>\d{8}T\d{12}Z)-(?P<writer>(?:[a-z0-9.-]+-)?\d+)-(?P<seq>\d+)\.jsonl"
)
# A closed segment's columnar copy, made by `fraud-train logs compact` beside it: retention
# deletes it with its segment, readers prefer it while it matches the segment.
PARQUET_TWIN_SUFFIX = ".parquet"
_NOT_IN_HOST = re.compile(r"[^a-z0-9.-]+")


class DecisionLine(TypedDict):
    """A "decisions" line as the decision writer hands it to orjson.

    The transaction as the feature engine saw it (`card` is the HMAC token the server
    keeps, never a card number), the answer (`decision` and `source` by name,
    `fallback_reason` "" when the model decided), the feature engine version, the
    `feature_config` fingerprint the features were computed with, the `features` the model
    read (NaN written as null; the whole list null when none were computed), and
    `logged_at`, when the line was written, and the `caller` who asked for the decision
    (`service.core.callers`; "" when none was identified), and, when a list or an analyst
    rule decided (source "RULE"), its `rule_id` and the `rules_version` it came from (""
    otherwise).
    """

    transaction_id: str
    event_time: datetime
    card: str
    terminal_id: str
    merchant_id: str
    amount: float
    currency: str
    mcc: int
    entry_mode: int
    card_present: bool | None
    country: str
    score: float
    decision: str
    source: str
    # A `StrEnum` member is a str, and orjson writes it as its value: the same JSON string.
    fallback_reason: str
    model_version: str
    feature_engine_version: int
    feature_config: str
    features: Sequence[float] | None
    logged_at: str
    caller: str
    rule_id: str
    rules_version: str


class OutcomeLine(TypedDict):
    """An "outcomes" line as the outcome writer hands it to orjson: `reported_at` as the
    caller reported it, `received_at` when the server accepted it, `caller` who reported it
    ("" when none was identified) and `caller_rank`, that caller's rank when the server
    received it, which decides between conflicting reports
    (`service.core.label_conflicts`). No card data."""

    transaction_id: str
    is_fraud: bool
    reported_at: str
    received_at: str
    caller: str
    caller_rank: int


class QuarantineLine(OutcomeLine):
    """A "quarantine" line: an outcome's line, and the `reason` it was not logged with the
    outcomes (`service.records.quarantine_writer.QuarantineReason`)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a line as a reader sees it.

    `types` are the exact types a decoded value may have (`INTEGER` values within 64 bits);
    `items`, for a list, those of its items. A reader skips a line without a `required`
    field, and takes an optional one that is absent as `absent`. A `descriptive` field is
    kept for the record but nothing is learnt from it: a value of another type is read as
    `absent` instead of costing the line, so a hand-edited or older line still trains.
    """

    name: str
    types: tuple[type, ...]
    required: bool = True
    absent: object = None
    items: tuple[type, ...] | None = None
    descriptive: bool = False


class _Absent:
    """The type of a field a line leaves out, in the shapes a schema accepts."""


_ABSENT = _Absent()


class LineSchema:
    """The fields of one kind's lines, in the order the writer writes them."""

    def __init__(self, kind: RecordKind, fields: Sequence[Field]) -> None:
        self.kind: Final = kind
        self.fields: Final = tuple(fields)
        self._by_name = {spec.name: spec for spec in self.fields}
        if len(self._by_name) != len(self.fields):
            raise ValueError(f"a {kind} field is declared twice")
        self._names = tuple(self._by_name)
        checked = tuple(spec for spec in self.fields if not spec.descriptive)
        self._checked_names = tuple(spec.name for spec in checked)
        self._absents = (_ABSENT,) * len(checked)
        allowed = [spec.types if spec.required else (*spec.types, _Absent) for spec in checked]
        # Every allowed combination of the checked fields' types (an optional one may also
        # be absent), so that `accepts` checks a line's types with one set lookup: it runs
        # once a line.
        self._shapes = frozenset(itertools.product(*allowed))
        # Positions in the line's values of the fields checked beyond their types.
        self._integers = tuple(index for index, spec in enumerate(checked) if spec.types == INTEGER)
        self._lists = tuple(
            (index, frozenset(spec.items))
            for index, spec in enumerate(checked)
            if spec.items is not None
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The field names, in the order the writer writes them."""
        return self._names

    def __getitem__(self, name: str) -> Field:
        """The field `name`; KeyError if this kind has none of that name."""
        return self._by_name[name]

    def accepts(self, record: object) -> bool:
        """Whether `record`, a decoded JSON value, is a line a reader can use: an object
        with every required field, each field it has (descriptive ones aside) of an accepted
        type, integers within 64 bits and list items of their accepted types. Unknown fields
        are ignored."""
        if not isinstance(record, dict):
            return False
        values = tuple(map(record.get, self._checked_names, self._absents))
        if tuple(map(type, values)) not in self._shapes:
            return False
        for index in self._integers:
            value = values[index]
            if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
                return False
        for index, item_types in self._lists:
            items = values[index]
            if type(items) is list and not set(map(type, items)) <= item_types:
                return False
        return True

    def values(self, records: Sequence[Mapping[str, object]], name: str) -> list[object]:
        """Field `name` of each accepted record: its `absent` value where the line leaves it
        out or, for a descriptive field, holds a value of another type (or an integer beyond
        64 bits). KeyError if this kind has no field of that name, records or not."""
        spec = self._by_name[name]
        absent = spec.absent
        column = [record.get(name, absent) for record in records]
        if not spec.descriptive:  # `accepts` has checked it
            return column
        types = set(map(type, column))
        if types <= {*spec.types, type(absent)} and (int not in types or _within_int64(column)):
            return column  # the usual case: every value as the writers write it
        return [_checked(value, spec) for value in column]


def _within_int64(column: Sequence[object]) -> bool:
    return all(_INT64_MIN <= value <= _INT64_MAX for value in column if type(value) is int)


def _checked(value: object, spec: Field) -> object:
    """`value` if a descriptive field of `spec` may hold it, else the field's `absent`."""
    if type(value) not in spec.types or (
        type(value) is int and not _INT64_MIN <= value <= _INT64_MAX
    ):
        return spec.absent
    return value


DECISION_SCHEMA = LineSchema(
    "decisions",
    (
        Field("transaction_id", TEXT),
        Field("event_time", TEXT),
        Field("card", TEXT),
        Field("terminal_id", TEXT),
        Field("merchant_id", TEXT, required=False, absent="", descriptive=True),
        Field("amount", NUMBER),
        Field("currency", TEXT, required=False, absent="", descriptive=True),
        Field("mcc", INTEGER, required=False, absent=-1, descriptive=True),
        # EntryMode.UNKNOWN when absent.
        Field("entry_mode", INTEGER, required=False, absent=0, descriptive=True),
        Field("card_present", (*FLAG, _NULL), required=False, absent=None, descriptive=True),
        Field("country", TEXT, required=False, absent="", descriptive=True),
        Field("score", NUMBER),
        Field("decision", TEXT),
        Field("source", TEXT),
        Field("fallback_reason", TEXT, required=False, absent="", descriptive=True),
        Field("model_version", TEXT),
        Field("feature_engine_version", INTEGER),
        # Written since feature settings were fingerprinted: "" on older lines.
        Field("feature_config", TEXT, required=False, absent=""),
        Field("features", (list, _NULL), items=(*NUMBER, _NULL)),
        Field("logged_at", TEXT, required=False, absent="", descriptive=True),
        # Written since callers were identified: "" on older lines.
        Field("caller", TEXT, required=False, absent="", descriptive=True),
        # Written since lists and rules decide (docs/rules.md): "" on older lines.
        Field("rule_id", TEXT, required=False, absent="", descriptive=True),
        Field("rules_version", TEXT, required=False, absent="", descriptive=True),
    ),
)
OUTCOME_SCHEMA = LineSchema(
    "outcomes",
    (
        Field("transaction_id", TEXT),
        Field("is_fraud", FLAG),
        Field("reported_at", TEXT),
        Field("received_at", TEXT),
        Field("caller", TEXT, required=False, absent="", descriptive=True),
        # Written since callers had ranks: 0 (every caller's rank before) on older lines.
        Field("caller_rank", INTEGER, required=False, absent=0),
    ),
)
QUARANTINE_SCHEMA = LineSchema(
    "quarantine",
    (*OUTCOME_SCHEMA.fields, Field("reason", TEXT, required=False, absent="", descriptive=True)),
)
SCHEMAS: Mapping[RecordKind, LineSchema] = {
    schema.kind: schema for schema in (DECISION_SCHEMA, OUTCOME_SCHEMA, QUARANTINE_SCHEMA)
}


def iso_utc(seconds: float) -> str:
    """Unix time `seconds` as ISO 8601 in UTC with microseconds, as the logs write times."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def segment_name(kind: RecordKind, opened_at: float, pid: int, seq: int, host: str = "") -> str:
    """The file name of a `kind` segment opened at Unix time `opened_at` by process `pid` on
    `host` (left out when empty), its `seq`th segment."""
    stamp = datetime.fromtimestamp(opened_at, UTC).strftime(_STAMP)
    writer = f"{host}-{pid}" if host else str(pid)
    return f"{kind}-{stamp}-{writer}-{seq}.jsonl"


def host_for_segments(host_name: str) -> str:
    """`host_name` as a segment name part: lower case, characters other than letters,
    digits, dots and dashes made dots, at most 63 characters (a DNS label's length)."""
    return _NOT_IN_HOST.sub(".", host_name.lower()).strip(".-")[:63]


def segment_opened_at(name: str, kind: RecordKind) -> float | None:
    """When the `kind` segment named `name` was opened (Unix time); None if it is not one."""
    match = _SEGMENT.fullmatch(name)
    if match is None or match["kind"] != kind:
        return None
    try:
        opened = datetime.strptime(match["stamp"], _STAMP)
    except ValueError:  # digits in the right places, but no date (month 13)
        return None
    return opened.replace(tzinfo=UTC).timestamp()


def is_segment(name: str, kind: RecordKind) -> bool:
    """Whether `name` is the file name of a `kind` segment."""
    return segment_opened_at(name, kind) is not None


def segment_writer(name: str, kind: RecordKind) -> tuple[str, int] | None:
    """The writer (host and process) of the `kind` segment named `name`, and its count of
    segments; None if it is not one. A writer only ever appends to its latest segment."""
    match = _SEGMENT.fullmatch(name)
    if match is None or segment_opened_at(name, kind) is None:
        return None
    return match["writer"], int(match["seq"])


def twin_of(segment_name: str) -> str:
    """The name of the Parquet twin of the segment named `segment_name`."""
    return segment_name + PARQUET_TWIN_SUFFIX


def segment_of_twin(name: str, kind: RecordKind) -> str | None:
    """The name of the `kind` segment whose Parquet twin is named `name`; None if `name` is
    no such twin."""
    segment = name.removesuffix(PARQUET_TWIN_SUFFIX)
    if segment == name or not is_segment(segment, kind):
        return None
    return segment


def segment_glob(kind: RecordKind) -> str:
    """The files a reader takes as `kind` segments: every name the writer gives, and any
    other file an operator names so (a hand-merged or renamed copy); retention deletes only
    names `is_segment` recognises."""
    return f"{kind}-*.jsonl"
