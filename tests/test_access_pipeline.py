"""The pipeline, a curator and readers with nothing but the keys ``mira access apply`` made them.

``mira run`` runs end to end on S3 stores with the pipeline role's keys only; a curator creates
a snapshot with the curator's; a reader reads its cohort through mira, and the server refuses
a reader of another cohort (``AccessDenied``), through mira and through a bare client.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mira.errors import AccessDenied
from storage import S3Config, open_store
from storage.iam import read_credentials
from tasks.sample.generate import generate_sample_data
from tests.seaweedfs import SeaweedServer

pytestmark = [pytest.mark.s3, pytest.mark.slow]

GATEWAY, RESEARCH = "s3://run-gateway/site", "s3://run-research/lab"
BATCH = "batch-0001-radiology"
OTHER_PATIENT = "0" * 32


def _mira(server: SeaweedServer, keys: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """``mira ARGS`` in a child process, with a principal's keys or the server's admin keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRA_", "AWS_", "PREFECT_"))}
    env.update(
        MIRA_GATEWAY_URL=GATEWAY,
        MIRA_RESEARCH_URL=RESEARCH,
        MIRA_S3_ENDPOINT_URL=str(server.config.endpoint_url),
        MIRA_S3_REGION="us-east-1",
        MIRA_DEID_SECRET="access-pipeline-test-secret-0123456789",
        MIRA_DASK_WORKERS="1",
        PREFECT_HOME=str(server.data_dir / "prefect-home"),
    )
    if keys is None:
        env["MIRA_S3_ACCESS_KEY_ID"] = str(server.config.access_key_id)
        env["MIRA_S3_SECRET_ACCESS_KEY"] = str(server.config.secret_access_key)
    else:
        found = read_credentials(keys)
        env["MIRA_S3_ACCESS_KEY_ID"] = found.access_key_id
        env["MIRA_S3_SECRET_ACCESS_KEY"] = found.secret_access_key
    mira = str(Path(sys.executable).with_name("mira"))
    return subprocess.run(
        [mira, *args], env=env, capture_output=True, text=True, timeout=540, check=False
    )


def _policy(patient: str) -> dict[str, Any]:
    return {
        "cohorts": {
            "mine": {"prefixes": [f"dicom/{patient}/"]},
            "theirs": {"prefixes": [f"dicom/{OTHER_PATIENT}/"]},
        },
        "principals": {
            "etl": {"role": "pipeline"},
            "cura": {"role": "curator"},
            "reader-a": {"role": "reader", "cohorts": ["mine"]},
            "reader-b": {"role": "reader", "cohorts": ["theirs"]},
        },
    }


def test_each_role_works_with_its_own_keys_only(tmp_path: Path) -> None:
    import botocore.session
    from botocore.exceptions import ClientError

    with SeaweedServer(tmp_path / "weed", iam_writable=True) as server:
        server.create_bucket("run-gateway")
        server.create_bucket("run-research", object_lock=True)
        sample = tmp_path / "sample"
        generate_sample_data(sample / "dropzone", patients=1, slides=0)
        owner = open_store(GATEWAY, server.config)
        batch = sample / "dropzone" / BATCH
        owner.write_many(
            {
                f"dropzone/{BATCH}/{path.relative_to(batch).as_posix()}": path.read_bytes()
                for path in batch.rglob("*")
                if path.is_file()
            }
        )
        policy, keys = tmp_path / "policy.yaml", tmp_path / "keys"
        policy.write_text(yaml.safe_dump(_policy(OTHER_PATIENT)))
        applied = _mira(
            server, None, "access", "apply", str(policy), "--credentials-dir", str(keys)
        )
        assert applied.returncode == 0, applied.stderr

        run = _mira(server, keys / "etl.env", "run", BATCH)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "pipeline summary" in run.stdout

        research = open_store(RESEARCH, server.config)
        instances = [o.key for o in research.list("dicom/")]
        patient = instances[0].split("/")[1]
        policy.write_text(yaml.safe_dump(_policy(patient)))
        again = _mira(server, None, "access", "apply", str(policy), "--credentials-dir", str(keys))
        assert again.returncode == 0, again.stderr

        snapshot = _mira(server, keys / "cura.env", "snapshot", "create", "curated-1")
        assert snapshot.returncode == 0, snapshot.stdout[-3000:] + snapshot.stderr[-3000:]

        def reader_store(name: str) -> Any:
            found = read_credentials(keys / f"{name}.env")
            config = S3Config(
                str(server.config.endpoint_url),
                found.access_key_id,
                found.secret_access_key,
                "us-east-1",
            )
            return open_store(RESEARCH, config)

        assert reader_store("reader-a").read_bytes(instances[0])[128:132] == b"DICM"
        with pytest.raises(AccessDenied):
            reader_store("reader-b").read_bytes(instances[0])
        listing = _mira(server, keys / "reader-b.env", "ls")
        assert listing.returncode == 1 and "access denied" in listing.stderr.lower()
        found = read_credentials(keys / "reader-b.env")
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=str(server.config.endpoint_url),
            aws_access_key_id=found.access_key_id,
            aws_secret_access_key=found.secret_access_key,
            region_name="us-east-1",
        )
        with pytest.raises(ClientError) as refused:
            client.get_object(Bucket="run-research", Key=f"lab/{instances[0]}")
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
