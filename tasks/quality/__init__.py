"""Quality: Great Expectations suites on the catalog, image QA on pixels, and the review queue.

The public face of the wing; ``stage`` runs a batch, ``config`` holds the thresholds' models,
``expectations`` the GX suites, ``image_qa`` the pixel checks and ``review`` the human queue.
"""

from tasks.quality.config import load_quality_config
from tasks.quality.expectations import DocsSite
from tasks.quality.review import decide, history, list_items
from tasks.quality.stage import (
    QualitySummary,
    assess_batch,
    catalog_batches,
    identifiers_from_file,
    publish_data_docs,
    read_validation,
)

__all__ = [
    "DocsSite",
    "QualitySummary",
    "assess_batch",
    "catalog_batches",
    "decide",
    "history",
    "identifiers_from_file",
    "list_items",
    "load_quality_config",
    "publish_data_docs",
    "read_validation",
]
