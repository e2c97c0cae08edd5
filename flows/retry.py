"""Retry policy shared by the stage tasks: transient storage errors only, with backoff.

This is the outer of the two retry layers (docs/architecture.md, "Retries: who owns which
failure"): ``storage`` retries one request for about a second (a throttle, a 5xx, a reset
connection); when that is not enough the store is out for longer, and Prefect reruns the whole
task, which is idempotent through the store, after 5, 10 and 20 seconds.
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from mira.errors import TransientStoreError

RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=5)  # 5, 10, 20 s: an outage of half a minute
RETRY_JITTER = 0.2  # tasks that failed together in one outage do not all return at once


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
    "retry_jitter_factor": RETRY_JITTER,
    "retry_condition_fn": only_transient,
    "persist_result": False,
    # Stages are idempotent through the store; Prefect's input hashing would only see settings.
    "cache_policy": NO_CACHE,
}
