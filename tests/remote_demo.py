"""``make demo-remote``: the demo's research store replicated to a second SeaweedFS server.

Starts a throwaway SeaweedFS server as the cloud remote (data in ``<data>/remote-seaweedfs``),
runs ``mira demo`` first when ``<data>/research`` holds no catalog yet, replicates every
published batch to ``s3://mira-remote/research`` and prints the lag, then stops the server
(``--keep`` keeps it serving until Ctrl-C, to look at it with any S3 client).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from pathlib import Path

from mira.errors import StoreError
from storage import open_store
from tasks.dataset import has_catalog
from tasks.replicate import BatchReport, LinkOptions, RemoteTarget, replicate, target_lag
from tests.seaweedfs import SeaweedServer

BUCKET = "mira-remote"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"), help="The demo's folder.")
    parser.add_argument("--keep", action="store_true", help="Keep the remote serving.")
    args = parser.parse_args()
    research = open_store(args.data / "research")
    if not has_catalog(research):
        mira = str(Path(sys.executable).with_name("mira"))
        subprocess.run([mira, "demo", "--data", str(args.data), "--slide-size", "4096"], check=True)
    with SeaweedServer(args.data.absolute() / "remote-seaweedfs") as server:
        with contextlib.suppress(OSError, StoreError):  # kept from an earlier run
            server.create_bucket(BUCKET)
        target = RemoteTarget("remote", f"s3://{BUCKET}/research", server.config)

        def landed(report: BatchReport) -> None:
            print(
                f"{report.batch}: {report.status} ({report.sent} sent, {report.sent_bytes} bytes)"
            )

        summary = replicate(research, [target], LinkOptions(), on_batch=landed)
        lag = target_lag(research, "remote")
        print(
            f"remote {server.config.endpoint_url} {target.url}: "
            f"{sum(1 for _ in target.open().list())} objects; lag {lag.batches} batches"
        )
        if args.keep:
            print(f"keys: {server.config.access_key_id} / {server.config.secret_access_key}")
            print("serving until Ctrl-C")
            with contextlib.suppress(KeyboardInterrupt):
                if server._process is not None:
                    server._process.wait()
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
