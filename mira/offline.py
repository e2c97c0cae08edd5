"""Offline defaults: mira makes no telemetry or analytics calls unless a site asks for them."""

from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "GX_ANALYTICS_ENABLED": "false",
}


def apply_offline_defaults() -> None:
    """Set the opt-outs in the environment before Prefect or GX are imported; explicit values win."""
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)
