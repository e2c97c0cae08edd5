"""Settings: MIRA_ variables, standard AWS variables, flags on top, the secret never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from mira.errors import ConfigError
from mira.settings import load_settings


def test_environment_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRA_GATEWAY_URL", "s3://gw/zone")
    monkeypatch.setenv("MIRA_RESEARCH_URL", "/srv/research")
    monkeypatch.setenv("MIRA_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-TEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    settings = load_settings(research_url="/other", dask_address=None)
    assert settings.gateway_url == "s3://gw/zone"
    assert settings.research_url == "/other"  # the flag wins
    s3 = settings.s3_config()
    assert (s3.endpoint_url, s3.access_key_id, s3.secret_access_key) == (
        "http://127.0.0.1:9000",
        "AKIA-TEST",
        "s3cr3t",
    )


def test_defaults_are_the_embedded_local_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MIRA_GATEWAY_URL", "MIRA_RESEARCH_URL", "MIRA_DASK_ADDRESS", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.gateway_url == "data/gateway"
    assert settings.research_url == "data/research"
    assert settings.dask_address == ""
    assert settings.prefect_api_url == ""


def test_secret_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRA_DEID_SECRET", "correct-horse-battery-staple")
    settings = load_settings()
    assert settings.deid_key() == b"correct-horse-battery-staple"
    assert "correct-horse" not in repr(settings)
    assert "correct-horse" not in str(settings.model_dump())


def test_secret_from_file_and_missing_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MIRA_DEID_SECRET", raising=False)
    monkeypatch.delenv("MIRA_DEID_SECRET_FILE", raising=False)
    with pytest.raises(ConfigError, match="MIRA_DEID_SECRET"):
        load_settings().deid_key()
    key_file = tmp_path / "key"
    key_file.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setenv("MIRA_DEID_SECRET_FILE", str(key_file))
    assert load_settings().deid_key() == b"0123456789abcdef0123456789abcdef"


def test_short_secret_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRA_DEID_SECRET", "short")
    with pytest.raises(ConfigError, match="at least"):
        load_settings().deid_key()
