"""fraud_rpc_refused_unread_total: the calls held by the server are not counted as unread,
and the counter never goes down when they finish or start (a real flood is counted in
tests/test_overload.py)."""

from __future__ import annotations

from service.observability.unread_calls import NAME, UnreadCalls, channelz_unfinished_calls


def _value(collector: UnreadCalls) -> float:
    (family,) = collector.collect()
    (sample,) = family.samples
    assert (family.name, sample.name) == (NAME, f"{NAME}_total")
    return sample.value


def test_calls_held_are_not_unread_and_the_count_never_goes_down():
    """Unfinished calls 10, 4 of them held: 6. Then 2 more held while none finished:
    still 6, not 4. Then 3 more refused unread and nothing held: 13 - 0."""
    readings = iter([(10, 4.0), (10, 6.0), (13, 0.0)])
    current: list[tuple[int, float]] = []

    def unfinished() -> int:
        current[:] = [next(readings)]
        return current[0][0]

    collector = UnreadCalls(unfinished=unfinished, held=lambda: current[0][1])

    assert [_value(collector) for _ in range(3)] == [6.0, 6.0, 13.0]


def test_an_unreadable_channelz_keeps_the_last_value():
    """A grpcio without the channelz call: the scrape still answers, with the last value."""
    calls = iter([None, AttributeError("module 'cygrpc' has no attribute")])

    def unfinished() -> int:
        error = next(calls)
        if error is not None:
            raise error
        return 5

    collector = UnreadCalls(unfinished=unfinished, held=lambda: 0.0)

    assert [_value(collector), _value(collector)] == [5.0, 5.0]


def test_channelz_reads_this_process_without_error():
    """The private call exists in the grpcio installed, and its JSON parses."""
    assert channelz_unfinished_calls() >= 0
