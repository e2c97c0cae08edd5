"""Replication: published batches of the on-site research store copied to remote object storage.

Only what a published batch's catalog lists (keys and SHA-256) is ever sent, from the local
research store only (never the gateway); every request carries a checksum the server verifies;
progress is durable per batch, object and multipart part; an exclusive lease per batch and target
keeps two replicators from sending a batch twice. See docs/replication.md.
"""

from tasks.replicate.plan import (
    BatchPlan,
    PlannedObject,
    PublishedBatch,
    plan_batch,
    published_batches,
)
from tasks.replicate.progress import BatchClaim, BatchDone, Progress, check_target_name
from tasks.replicate.replicator import (
    BatchReport,
    RemoteTarget,
    ReplicationSummary,
    replicate,
)
from tasks.replicate.status import TargetLag, lag_report, target_lag
from tasks.replicate.targets import TARGETS_ENV, target_environment, targets_from
from tasks.replicate.transfer import LinkOptions

__all__ = [
    "TARGETS_ENV",
    "BatchClaim",
    "BatchDone",
    "BatchPlan",
    "BatchReport",
    "LinkOptions",
    "PlannedObject",
    "Progress",
    "PublishedBatch",
    "RemoteTarget",
    "ReplicationSummary",
    "TargetLag",
    "check_target_name",
    "lag_report",
    "plan_batch",
    "published_batches",
    "replicate",
    "target_environment",
    "target_lag",
    "targets_from",
]
