"""What the Prefect UI shows of a run: its name after its work, its batch tag, its summary artifact.

Runs are named ``pipeline/<batch>``, ``<stage>/<batch>`` and ``snapshot/<name>`` instead of
Prefect's random names, carry a ``batch:<name>`` tag, and each stage publishes the summary the
CLI prints as a markdown artifact (the run's Artifacts tab; with a key, also the Artifacts page).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

_KEY_UNSAFE = re.compile(r"[^a-z0-9-]+")


def run_name(stage: str, parameter: str = "batch") -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``<stage>/<value of parameter>`` (``<stage>/all`` if empty).

    ``parameter`` may name an attribute of a model parameter, as ``params.name``.
    """

    def name() -> str:
        head, _, attribute = parameter.partition(".")
        value: Any = flow_run.parameters.get(head)
        if attribute and value is not None:
            value = (
                value.get(attribute) if isinstance(value, Mapping) else getattr(value, attribute)
            )
        return f"{stage}/{value or 'all'}"

    return name


def batch_tag(batch: str) -> str:
    """The tag every run of a batch carries, to filter the UI's run list by batch."""
    return f"batch:{batch}"


def tag_this_run(tag: str) -> None:
    """Add ``tag`` to the running flow run (a run started from the UI or a trigger has none)."""
    from prefect.client.orchestration import get_client

    run_id = flow_run.id
    if run_id is None:
        return
    with get_client(sync_client=True) as client:
        tags = client.read_flow_run(run_id).tags
        if tag not in tags:
            client.update_flow_run(run_id, tags=[*tags, tag])


def artifact_key(stage: str, subject: str) -> str:
    """An artifact key (lowercase letters, digits, dashes) for ``stage`` of ``subject``."""
    slug = _KEY_UNSAFE.sub("-", subject.lower()).strip("-")
    return f"{stage}-{slug}" if slug else stage


def publish_summary(
    stage: str, subject: str, title: str, rows: Iterable[tuple[str, object]]
) -> None:
    """The stage's summary as a two-column markdown table artifact of the current run."""
    lines = [f"### {title}", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {_cell(value)} |" for label, value in rows]
    create_markdown_artifact(
        "\n".join(lines), key=artifact_key(stage, subject), description=f"{stage}: {subject}"
    )


def _cell(value: object) -> str:
    if isinstance(value, Mapping):
        value = ", ".join(f"{k}: {v}" for k, v in sorted(value.items())) or "none"
    text = str(value) if value not in (None, "") else "none"
    return text.replace("|", "\\|").replace("\n", " ")
