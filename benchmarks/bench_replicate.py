"""Replication between two loopback SeaweedFS servers (site and cloud), verification on, beside
rclone copying the same objects with its checksums on; and what a run killed at 50% and then
resumed sends, compared with a clean run.

Run: ``.venv/bin/python -m benchmarks.bench_replicate [--mib 256] [--concurrency 4]``. Prints a
table and writes ``benchmarks/results/bench_replicate.json``. Goals (issue 18): mira's
throughput >= rclone's; the killed-and-resumed run sends < 5% more bytes than the clean run.
Bytes sent are counted by a relay in front of the cloud server (request headers included, for
both tools alike).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from storage import S3Config, Store, open_store
from tasks.replicate import (
    LinkOptions,
    RemoteTarget,
    plan_batch,
    published_batches,
    replicate,
    target_environment,
)
from tests.relay import Relay
from tests.replicate_batches import large_object, publish_batch
from tests.seaweedfs import SeaweedServer

RESULTS = Path(__file__).parent / "results" / "bench_replicate.json"
SITE_BUCKET = "mira-site"
CLOUD_BUCKET = "mira-cloud"
LARGE_MIB = 48
SMALL_KIB = 256
PART_MIB = 8
RESUME_GOAL = 1.05


def build_site(site: Store, mib: int) -> tuple[int, int]:
    """Half the bytes as 256 KiB instances, half as 48 MiB slides, in batches of one slide."""
    large = max(1, mib // 2 // LARGE_MIB)
    small_per_batch = max(1, (mib // 2) * 1024 // SMALL_KIB // large)
    for n in range(large):
        publish_batch(
            site,
            f"bench-{n:03d}",
            n,
            instances=small_per_batch,
            instance_bytes=SMALL_KIB * 1024,
            slides={f"bench-slide-{n}": large_object(LARGE_MIB * 1024 * 1024, n)},
        )
    objects = size = 0
    for batch in published_batches(site):
        plan = plan_batch(site, batch)
        objects += len(plan.objects) + len(plan.catalog)
        size += plan.bytes
    return objects, size


def listed_keys(site: Store) -> list[str]:
    keys: list[str] = []
    for batch in published_batches(site):
        plan = plan_batch(site, batch)
        keys += [o.key for o in plan.objects] + [p.key for p in plan.catalog]
    return keys


def run_mira(site: Store, cloud: SeaweedServer, prefix: str, concurrency: int) -> dict[str, Any]:
    with Relay(cloud.config, counting=True) as relay:
        target = RemoteTarget(prefix, f"s3://{CLOUD_BUCKET}/{prefix}", relay.config)
        options = LinkOptions(concurrency=concurrency, part_bytes=PART_MIB * 1024 * 1024)
        started = time.perf_counter()
        summary = replicate(site, [target], options)
        seconds = time.perf_counter() - started
        assert summary.ok, summary
        return {"seconds": seconds, "sent_bytes": summary.sent_bytes, "wire": relay.upstream_bytes}


def rclone_env(name: str, config: S3Config) -> dict[str, str]:
    upper = name.upper()
    return {
        f"RCLONE_CONFIG_{upper}_TYPE": "s3",
        f"RCLONE_CONFIG_{upper}_PROVIDER": "Other",
        f"RCLONE_CONFIG_{upper}_ENDPOINT": config.endpoint_url or "",
        f"RCLONE_CONFIG_{upper}_ACCESS_KEY_ID": config.access_key_id or "",
        f"RCLONE_CONFIG_{upper}_SECRET_ACCESS_KEY": config.secret_access_key or "",
        f"RCLONE_CONFIG_{upper}_REGION": "us-east-1",
    }


def run_rclone(
    site: SeaweedServer, cloud: SeaweedServer, keys: list[str], work: Path, concurrency: int
) -> dict[str, Any]:
    """rclone copy of the same keys, checksums on (MD5 per single PUT and per part, compared
    after upload), with the same part size and objects in flight."""
    files = work / "files-from.txt"
    files.write_text("\n".join(keys) + "\n")
    with Relay(cloud.config, counting=True) as relay:
        env = dict(
            os.environ, **rclone_env("site", site.config), **rclone_env("cloud", relay.config)
        )
        command = [
            str(Path(sys.executable).with_name("rclone")),
            "copy",
            f"site:{SITE_BUCKET}/research",
            f"cloud:{CLOUD_BUCKET}/rclone",
            "--files-from", str(files),
            "--checksum",
            "--transfers", str(concurrency),
            "--s3-upload-cutoff", f"{PART_MIB}M",
            "--s3-chunk-size", f"{PART_MIB}M",
            "--s3-upload-concurrency", "1",
            "--no-traverse",
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=3600)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "wire": relay.upstream_bytes}


def run_killed_and_resumed(
    site: Store,
    site_server: SeaweedServer,
    cloud: SeaweedServer,
    clean_wire: int,
    work: Path,
    concurrency: int,
) -> dict[str, Any]:
    """``mira replicate`` killed (SIGKILL) once half the clean run's bytes went, then resumed."""
    with Relay(cloud.config, counting=True) as relay:
        target = RemoteTarget("resume", f"s3://{CLOUD_BUCKET}/resume", relay.config)
        env = dict(
            os.environ,
            MIRA_RESEARCH_URL=site.url,
            MIRA_GATEWAY_URL=str(work / "gateway"),
            MIRA_S3_ENDPOINT_URL=site_server.config.endpoint_url or "",
            MIRA_S3_ACCESS_KEY_ID=site_server.config.access_key_id or "",
            MIRA_S3_SECRET_ACCESS_KEY=site_server.config.secret_access_key or "",
            MIRA_S3_REGION="us-east-1",
            MIRA_REPLICATE_TARGETS=f"resume={target.url}",
            MIRA_AUDIT="false",
            **target_environment(target),
        )
        command = [str(Path(sys.executable).with_name("mira")), "replicate",
                   "--concurrency", str(concurrency), "--part-mib", str(PART_MIB)]  # fmt: skip
        process = subprocess.Popen(command, env=env, start_new_session=True)
        while relay.upstream_bytes < clean_wire // 2 and process.poll() is None:
            time.sleep(0.01)
        killed_at = relay.upstream_bytes
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        options = LinkOptions(concurrency=concurrency, part_bytes=PART_MIB * 1024 * 1024)
        summary = replicate(site, [target], options)
        assert summary.ok, summary
        check = replicate(site, [target], options, reverify=True)  # every object HEAD-verified
        assert check.ok and check.sent_bytes == 0, check
        return {"killed_at_wire": killed_at, "wire": relay.upstream_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="Data to replicate, in MiB.")
    parser.add_argument("--concurrency", type=int, default=4, help="Objects in flight.")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="bench-replicate-") as folder:
        work = Path(folder)
        with SeaweedServer(work / "site") as site_server, SeaweedServer(work / "cloud") as cloud:
            site_server.create_bucket(SITE_BUCKET)
            cloud.create_bucket(CLOUD_BUCKET)
            site = open_store(f"s3://{SITE_BUCKET}/research", site_server.config)
            objects, size = build_site(site, args.mib)
            mira = run_mira(site, cloud, "clean", args.concurrency)
            rclone = run_rclone(site_server, cloud, listed_keys(site), work, args.concurrency)
            resumed = run_killed_and_resumed(
                site, site_server, cloud, mira["wire"], work, args.concurrency
            )
    report(console, args, objects, size, mira, rclone, resumed)


def report(
    console: Console,
    args: argparse.Namespace,
    objects: int,
    size: int,
    mira: dict[str, Any],
    rclone: dict[str, Any],
    resumed: dict[str, Any],
) -> None:
    mib = size / 2**20
    ratio = resumed["wire"] / mira["wire"]
    table = Table(title=f"replication of {objects} objects, {mib:.0f} MiB, loopback")
    for column in ("run", "seconds", "MiB/s", "bytes on the wire"):
        table.add_column(column)
    table.add_row("mira (SHA-256 per request, HEAD-verified)", f"{mira['seconds']:.1f}",
                  f"{mib / mira['seconds']:.1f}", str(mira["wire"]))  # fmt: skip
    table.add_row("rclone copy --checksum", f"{rclone['seconds']:.1f}",
                  f"{mib / rclone['seconds']:.1f}", str(rclone["wire"]))  # fmt: skip
    table.add_row("mira killed at 50% + resumed", "-", "-", str(resumed["wire"]))
    console.print(table)
    faster = mib / mira["seconds"] >= mib / rclone["seconds"]
    console.print(f"throughput goal (mira >= rclone): {'met' if faster else 'NOT met'}")
    console.print(
        f"resume goal (< 5% more bytes than a clean run): {ratio - 1:+.1%} "
        f"({'met' if ratio < RESUME_GOAL else 'NOT met'})"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "objects": objects,
                "bytes": size,
                "concurrency": args.concurrency,
                "part_mib": PART_MIB,
                "mira": mira,
                "rclone": rclone,
                "resumed": resumed,
                "resume_extra_fraction": ratio - 1,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
