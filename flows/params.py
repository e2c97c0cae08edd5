"""Flow parameters: pydantic models, so the Prefect UI renders a form with descriptions."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mira.settings import Settings, load_settings


class StoreParams(BaseModel):
    """Where the stores are; empty fields use the worker's MIRA_* settings."""

    gateway_url: str | None = Field(
        None,
        description="Gateway store (PHI side: drop zone, quarantine). Empty: MIRA_GATEWAY_URL.",
    )
    research_url: str | None = Field(
        None, description="Research store (de-identified only). Empty: MIRA_RESEARCH_URL."
    )
    dask_address: str | None = Field(
        None, description="Dask scheduler address. Empty: MIRA_DASK_ADDRESS, else a LocalCluster."
    )

    def settings(self) -> Settings:
        """The worker's settings with these overrides applied."""
        return load_settings(
            gateway_url=self.gateway_url,
            research_url=self.research_url,
            dask_address=self.dask_address,
        )
