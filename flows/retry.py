"""Retry policy shared by the stage tasks: transient storage errors only, with backoff."""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from mira.errors import TransientStoreError

RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=2)


def only_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry when the task failed on a transient storage error; bad data fails fast."""
    try:
        state.result()
    except TransientStoreError:
        return True
    except Exception:
        return False
    return False


RETRY_POLICY: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_condition_fn": only_transient,
    "persist_result": False,
    # Stages are idempotent through the store; Prefect's input hashing would only see settings.
    "cache_policy": NO_CACHE,
}
