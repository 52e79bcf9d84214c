"""The fuzz run's case generator: every RPC drawn, ScoreBatch's batches well formed."""

from __future__ import annotations

from benchmarks.faults.fuzz_cases import DOCUMENTED, METHODS, SCORE_BATCH, CaseMaker
from service.grpc_api._proto.fraud.v1 import scoring_pb2


def test_every_method_is_drawn_and_has_its_documented_codes() -> None:
    maker = CaseMaker(seed=3, run_id="t", admin_token="token")
    cases = [maker.case() for _ in range(400)]
    assert {case.method for case in cases} == set(METHODS) == set(DOCUMENTED)


def test_a_batch_case_is_one_batch_request_of_scored_transactions_or_its_mutation() -> None:
    """Unmutated batch cases parse as ScoreBatchRequest: empty ones, ones one past the
    default limit (65), and transactions with ids of the run among them."""
    maker = CaseMaker(seed=5, run_id="run", admin_token="token")
    batches = [case for case in (maker.case() for _ in range(2_000)) if case.method == SCORE_BATCH]
    sizes = {
        len(scoring_pb2.ScoreBatchRequest.FromString(case.payloads[0]).transactions)
        for case in batches
        if not case.mutated
    }
    assert all(len(case.payloads) == 1 for case in batches)
    assert {0, 1, 65} <= sizes
    assert any(case.mutated for case in batches)
