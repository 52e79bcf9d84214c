"""Tests for service.grpc_api.rate_limits: the token bucket, each caller's own bucket and
counter, and the rates the settings give (a caller's own before the default)."""

from __future__ import annotations

import pytest

from service.config.settings import AuthSettings, CallerSettings, ReportLimitSettings, ServeSettings
from service.grpc_api.rate_limits import CallerRateLimits, Rate, TokenBucket, report_rates
from tests.process_metrics import sample_value

DIGESTS = iter(f"{number:064x}" for number in range(1, 100))


def test_a_bucket_lets_a_burst_through_then_the_rate() -> None:
    """A full bucket takes `burst` calls at once, then one per 1/rate seconds, never more
    than `burst` saved up however long it rests."""
    bucket = TokenBucket(Rate(per_second=10.0, burst=3), now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)
    assert not bucket.take(0.1)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_refused_calls_do_not_spend_tokens() -> None:
    """A caller hammering an empty bucket gets through at the rate all the same: refusals
    take nothing, so refills are not eaten by them."""
    # Powers of two, so that the refills add up exactly in binary floating point.
    bucket = TokenBucket(Rate(per_second=128.0, burst=1), now=0.0)
    assert bucket.take(0.0)
    allowed = sum(bucket.take(step / 1024) for step in range(1, 1025))  # 1,024 calls in 1 s
    assert allowed == 128


def test_a_rate_needs_a_positive_rate_and_burst() -> None:
    """Zero or negative rates and empty bursts are refused when made."""
    with pytest.raises(ValueError, match="per_second"):
        Rate(per_second=0.0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        Rate(per_second=1.0, burst=0)


def _refused(caller: str) -> float:
    value = sample_value("fraud_outcomes_rate_limited_total", {"caller": caller})
    assert value is not None
    return value


def test_each_caller_has_its_own_bucket_and_counter() -> None:
    """One caller over its rate is refused with a message naming it and its rate, and
    counted under its name; another caller is untouched; an unknown caller is not limited."""
    now = [0.0]
    limits = CallerRateLimits(
        "ReportOutcome",
        {"flooder": Rate(1.0, 2), "chargebacks": Rate(1.0, 2)},
        clock=lambda: now[0],
    )
    before = _refused("flooder"), _refused("chargebacks")
    refusals = [limits.refusal("flooder") for _ in range(5)]
    assert refusals[:2] == [None, None]
    assert (
        refusals[2:]
        == [
            "caller 'flooder' is over the ReportOutcome rate (1 a second, bursts of 2): retry "
            "later, more slowly"
        ]
        * 3
    )
    assert limits.refusal("chargebacks") is None
    assert limits.refusal("someone-else") is None
    assert (_refused("flooder"), _refused("chargebacks")) == (before[0] + 3, before[1])
    now[0] = 1.0
    assert limits.refusal("flooder") is None


def _caller(name: str, roles: list[str], **limits: float) -> CallerSettings:
    return CallerSettings.model_validate(
        {"name": name, "roles": roles, "token_sha256": [next(DIGESTS)], **limits}
    )


def test_the_settings_give_each_reporting_caller_its_rate() -> None:
    """Callers with the report role get the default rate or their own; others get none; in
    open mode (development) no call is limited."""
    settings = ServeSettings(
        report_limit=ReportLimitSettings(per_second=50.0, burst=500),
        auth=AuthSettings(
            callers=[
                _caller("pos", ["score", "report"]),
                _caller("chargebacks", ["report"], report_per_second=5000.0, report_burst=20000),
                _caller("ops", ["admin"]),
            ]
        ),
    )
    assert report_rates(settings) == {"pos": Rate(50.0, 500), "chargebacks": Rate(5000.0, 20000)}
    assert report_rates(ServeSettings()) == {}
