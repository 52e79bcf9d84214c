"""Who asked: the name of the authenticated caller of the call being served.

The transport sets it once per call, after authenticating it (`service.grpc_api.
interceptors`), and whoever keeps a record of what the call did reads it (the decision and
outcome logs), so the name reaches them without passing through every signature between:
the scoring core never handles it. A context variable, so each call (an asyncio task,
with a context of its own) sees its own caller, and setting it allocates nothing.

"" when no caller is known: no callers are configured (the development default), or the
code runs outside a call (training's replay, tools).
"""

from __future__ import annotations

from contextvars import ContextVar

CURRENT_CALLER: ContextVar[str] = ContextVar("fraud_current_caller", default="")


def current_caller() -> str:
    """The authenticated caller of the call being served; "" when none is known."""
    return CURRENT_CALLER.get()
