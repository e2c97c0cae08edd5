"""The catalog answers queries only: no writes, no files, no other store taken for it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mira.errors import InvalidInput
from storage import open_store
from tasks.dataset import catalog_tables, query_catalog
from tests.test_quality_cli import cli
from tests.test_quality_cli import research as research

runner = CliRunner()


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("COPY (SELECT * FROM instances) TO '{out}'", "only SELECT"),
        ("CREATE TABLE leak AS SELECT * FROM instances", "only SELECT"),
        ("INSERT INTO instances SELECT * FROM instances", "only SELECT"),
        ("SELECT * FROM read_csv('/etc/passwd')", "file system operations are disabled"),
        ("ATTACH '{out}' AS other", "only SELECT"),
        ("SET enable_external_access = true", "only SELECT"),
    ],
)
def test_statements_that_write_or_touch_files_are_refused(
    research: Path, tmp_path: Path, sql: str, why: str
) -> None:
    target = tmp_path / "leak.csv"
    with pytest.raises(InvalidInput, match=why):
        query_catalog(open_store(research), sql.format(out=target))
    assert not target.exists()


def test_show_tables_and_the_tables_command(research: Path) -> None:
    shown = query_catalog(open_store(research), "SHOW TABLES").column(0).to_pylist()
    assert set(shown) == {"instances", "slides"}
    counts = {t.name: (t.parts, t.rows) for t in catalog_tables(open_store(research))}
    assert counts["instances"] == (2, 9) and counts["slides"] == (1, 1)
    assert counts["quality"] == (0, 0)
    result = runner.invoke(cli(), ["--research", str(research), "catalog", "tables"])
    assert result.exit_code == 0, result.output
    assert "instances" in result.output and "pyramids" in result.output


def test_query_help_lists_the_real_tables() -> None:
    result = runner.invoke(cli(), ["catalog", "query", "--help"])
    for table in ("instances", "series", "studies", "slides", "pyramids", "splits", "batches"):
        assert table in result.output


@pytest.mark.parametrize("command", [["ls"], ["catalog", "query", "SELECT 1"], ["qa"]])
def test_a_store_without_a_catalog_is_an_error(tmp_path: Path, command: list[str]) -> None:
    wrong = tmp_path / "not-the-research-store"
    result = runner.invoke(cli(), ["--research", str(wrong), *command])
    assert result.exit_code != 0
    assert isinstance(result.exception, FileNotFoundError)
    assert f"no catalog at {wrong}/catalog" in str(result.exception)
    assert "MIRA_RESEARCH_URL" in str(result.exception)


def test_empty_results_say_none(research: Path) -> None:
    flags = ["--research", str(research)]
    listing = runner.invoke(cli(), [*flags, "ls", "instances", "--modality", "XA"])
    assert listing.exit_code == 0 and "instances: none (0 rows)" in listing.output
    queue = runner.invoke(cli(), [*flags, "review", "list"])
    assert queue.exit_code == 0 and "review queue: none" in queue.output
