"""Which failures are transient and how a model call is retried: the one retry layer.

    policy = RetryPolicy.from_settings(settings)
    delay = policy.delay(attempt=1, error=exc, waited_s=0.0)   # None: give up, it is final

Only a model *call* is retried (``workers/models.py`` wraps every model), in place: the
run keeps its tools' results, the session keeps its lock and order.  Nothing else is:
a turn timeout, a guardrail, ``max_turns``, a 4xx and an exception from the agent's
own code end the turn at once with their error code.  The OpenAI client's own retries
are off (``shared.models``), so retries never nest; each call's retries are bounded in
count (``TURNQ_MODEL_RETRIES``) and in total waiting time (``TURNQ_MODEL_RETRY_BUDGET_S``),
with exponential backoff, full jitter and the server's ``Retry-After`` when it sends one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import openai

from shared.settings import Settings
from shared.status import ErrorCode

# HTTP statuses worth asking again: timeout, conflict, rate limit (and every 5xx).
_TRANSIENT_STATUS = frozenset({408, 409, 429})


class ModelCallFailed(Exception):
    """A model call failed for good: transient past the retries, or permanent at once."""

    def __init__(self, code: ErrorCode, cause: BaseException, attempts: int) -> None:
        self.code = code
        self.attempts = attempts
        text = str(cause) or type(cause).__name__
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"the model call failed{tries}: {type(cause).__name__}: {text}"[:2000])


class BrokenResponse(Exception):
    """The model's response ended without completing (a cut stream, a malformed body)."""


def is_transient(error: BaseException) -> bool:
    """True for failures another identical request may not hit: rate limits, 5xx,
    timeouts, dropped connections and broken responses."""
    if isinstance(error, openai.APIStatusError):
        return error.status_code in _TRANSIENT_STATUS or error.status_code >= 500
    return isinstance(
        error,
        openai.APIConnectionError  # includes APITimeoutError
        | openai.APIResponseValidationError
        | BrokenResponse
        | json.JSONDecodeError
        | ConnectionError
        | TimeoutError,
    )


def retry_after_s(error: BaseException) -> float | None:
    """The server's ``Retry-After`` (seconds), if it sent one."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


@dataclass(frozen=True)
class RetryPolicy:
    retries: int
    base_s: float
    max_delay_s: float
    budget_s: float

    @classmethod
    def from_settings(cls, s: Settings) -> RetryPolicy:
        return cls(
            s.model_retries, s.model_retry_backoff_s, s.model_retry_max_delay_s,
            s.model_retry_budget_s,
        )  # fmt: skip

    def delay(self, attempt: int, error: BaseException, waited_s: float) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1-based), or None: final."""
        if attempt > self.retries or not is_transient(error):
            return None
        hinted = retry_after_s(error)
        if hinted is None:
            cap = min(self.max_delay_s, self.base_s * 2 ** (attempt - 1))
            delay = random.uniform(cap / 2, cap)
        else:
            delay = min(hinted, self.max_delay_s)
        return delay if waited_s + delay <= self.budget_s else None

    def failure(self, error: BaseException, attempts: int) -> ModelCallFailed:
        code = ErrorCode.MODEL_UNAVAILABLE if is_transient(error) else ErrorCode.MODEL_ERROR
        return ModelCallFailed(code, error, attempts)
