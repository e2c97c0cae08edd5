"""Prefect flows: orchestration only. Each stage is a flow; ``pipeline`` chains them for a batch."""

from mira.offline import apply_offline_defaults

apply_offline_defaults()

from flows import run_logs  # noqa: E402  (after the offline defaults, before any flow runs)

run_logs.install()
