"""Cohorts and roles, enforced by the real SeaweedFS server with the keys ``mira access`` made.

Every denial is asserted on the S3 error code of the server's own response, through a bare
botocore client: nothing of mira stands between the request and the refusal.
"""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from mira.access import (
    AccessPolicy,
    Role,
    Stores,
    load_policy,
    permissions,
    policy_schema,
    readers_of,
)
from mira.cli.root import app, register_commands
from mira.errors import ConfigError
from storage import S3Config, open_store
from storage.iam import IdentityAdmin, policy_document, read_credentials
from tests.seaweedfs import SeaweedServer

register_commands()
runner = CliRunner()

GATEWAY_BUCKET = "acl-gateway"
RESEARCH_BUCKET = "acl-research"
GATEWAY = f"s3://{GATEWAY_BUCKET}/site"
RESEARCH = f"s3://{RESEARCH_BUCKET}/lab"
OBJECT_A = "lab/dicom/PA/s1/x1/i1.dcm"
OBJECT_B = "lab/dicom/PB/s2/x2/i2.dcm"
OBJECTS = {
    RESEARCH_BUCKET: [
        "lab/dicom/PA/s1/x1/i1.dcm",
        "lab/dicom/PB/s2/x2/i2.dcm",
        "lab/snapshots/snap-a/manifest.parquet",
        "lab/snapshots/snap-b/manifest.parquet",
        "lab/snapshots/_index/snap-a.json",
        "lab/snapshots/_index/snap-b.json",
        "lab/catalog/instances/p1.parquet",
    ],
    GATEWAY_BUCKET: ["site/dropzone/b1/Doe^Jane.dcm"],
}
POLICY: dict[str, Any] = {
    "version": 1,
    "cohorts": {
        "cohort-a": {"prefixes": ["dicom/PA/"], "snapshots": ["snap-a"]},
        "cohort-b": {"prefixes": ["dicom/PB/"], "snapshots": ["snap-b"]},
    },
    "principals": {
        "etl": {"role": "pipeline"},
        "cura": {"role": "curator"},
        "reader-a": {"role": "reader", "cohorts": ["cohort-a"]},
        "reader-b": {"role": "reader", "cohorts": ["cohort-b"]},
        "ops": {"role": "admin"},
    },
}


def _client(endpoint: str, access_key: str, secret_key: str) -> Any:
    """A bare S3 client: no mira check, no retry, the server's answer as it comes."""
    import botocore.session
    from botocore.config import Config

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
    )


def _error_code(method: Any, **kwargs: Any) -> str:
    """The S3 error code of the server's refusal of ``method(**kwargs)``."""
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as caught:
        method(**kwargs)
    return str(caught.value.response["Error"]["Code"])


def _env(server: SeaweedServer) -> dict[str, str]:
    config = server.config
    return {
        "MIRA_GATEWAY_URL": GATEWAY,
        "MIRA_RESEARCH_URL": RESEARCH,
        "MIRA_S3_ENDPOINT_URL": str(config.endpoint_url),
        "MIRA_S3_ACCESS_KEY_ID": str(config.access_key_id),
        "MIRA_S3_SECRET_ACCESS_KEY": str(config.secret_access_key),
        "MIRA_S3_REGION": "us-east-1",
    }


def _mira(server: SeaweedServer, *args: str) -> Any:
    result = runner.invoke(app, list(args), env=_env(server))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


class Applied:
    """The IAM-enabled server after ``mira access apply``, and bare clients per principal."""

    def __init__(self, server: SeaweedServer, folder: Path) -> None:
        self.server = server
        self.policy_file = folder / "policy.yaml"
        self.credentials_dir = folder / "credentials"
        self.endpoint = str(server.config.endpoint_url)
        self.owner = _client(
            self.endpoint, str(server.config.access_key_id), str(server.config.secret_access_key)
        )

    def keys(self, principal: str) -> tuple[str, str]:
        found = read_credentials(self.credentials_dir / f"{principal}.env")
        return found.access_key_id, found.secret_access_key

    def as_(self, principal: str) -> Any:
        return _client(self.endpoint, *self.keys(principal))

    def apply(self) -> Any:
        return _mira(
            self.server,
            "access",
            "apply",
            str(self.policy_file),
            "--credentials-dir",
            str(self.credentials_dir),
        )


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    folder = tmp_path_factory.mktemp("access")
    with SeaweedServer(folder / "weed", iam_writable=True) as server:
        server.create_bucket(GATEWAY_BUCKET)
        server.create_bucket(RESEARCH_BUCKET, object_lock=True)
        state = Applied(server, folder)
        for bucket, keys in OBJECTS.items():
            for key in keys:
                state.owner.put_object(Bucket=bucket, Key=key, Body=b"payload " + key.encode())
        state.policy_file.write_text(yaml.safe_dump(POLICY))
        result = state.apply()
        assert "created: cura, etl, ops, reader-a, reader-b" in result.output
        yield state


def test_policy_is_validated_with_clear_messages(tmp_path: Path) -> None:
    bad = {
        "cohorts": {"a": {"prefixes": ["dicom/PA/"]}},
        "principals": {"r": {"role": "reader", "cohorts": ["nope"]}},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="unknown cohorts"):
        load_policy(path)
    for principals, message in (
        ({"r": {"role": "reader"}}, "needs at least one cohort"),
        ({"p": {"role": "pipeline", "cohorts": ["a"]}}, "only readers have cohorts"),
        ({"Bad Name": {"role": "admin"}}, "principal name"),
        ({"x": {"role": "superuser"}}, "principals.x.role"),
    ):
        path.write_text(yaml.safe_dump({**bad, "principals": principals}))
        with pytest.raises(ConfigError, match=message):
            load_policy(path)
    path.write_text(yaml.safe_dump({"cohorts": {"a": {"prefixes": ["../gateway"]}}}))
    with pytest.raises(ConfigError, match="relative"):
        load_policy(path)
    assert set(policy_schema()["properties"]) == {"version", "cohorts", "principals"}
    listed = runner.invoke(app, ["access", "roles"])
    assert all(role.value in listed.output for role in Role)
    assert "cohorts" in json.loads(runner.invoke(app, ["access", "schema"]).output)["properties"]


def test_documents_grant_each_role_only_its_rights() -> None:
    policy = AccessPolicy.model_validate(POLICY)
    stores = Stores(gateway=GATEWAY, research=RESEARCH)
    granted = permissions(policy, stores)
    reader_doc = json.dumps(policy_document(granted["reader-a"]))
    assert "lab/dicom/PA/*" in reader_doc and "PB" not in reader_doc
    assert "lab/snapshots/snap-a/*" in reader_doc and "snap-b" not in reader_doc
    assert not any(word in reader_doc for word in ("Delete", "s3:*", GATEWAY_BUCKET))
    writes = [
        statement["Resource"]
        for statement in policy_document(granted["reader-a"])["Statement"]
        if "s3:PutObject" in statement["Action"]
    ]
    assert writes == [[f"arn:aws:s3:::{RESEARCH_BUCKET}/lab/audit/*"]]  # its audit records only
    assert readers_of(policy, stores, GATEWAY) == ["etl"]
    assert {p.role for p in policy.principals.values()} == set(Role)


def test_local_stores_have_no_identities_to_apply(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    result = runner.invoke(
        app,
        ["access", "apply", str(path), "--credentials-dir", str(tmp_path / "c")],
        env={"MIRA_GATEWAY_URL": str(tmp_path / "g"), "MIRA_RESEARCH_URL": str(tmp_path / "r")},
    )
    assert isinstance(result.exception, ConfigError)
    assert "only an S3 store has identities" in str(result.exception)


@pytest.mark.s3
def test_credentials_are_private_files_never_printed(applied: Applied) -> None:
    for principal in POLICY["principals"]:
        path = applied.credentials_dir / f"{principal}.env"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(applied.credentials_dir.stat().st_mode) == 0o700
    again = applied.apply()
    assert "5 principals applied (5 already up to date)" in again.output
    assert "no key file" not in again.output
    elsewhere = _mira(
        applied.server,
        "access",
        "apply",
        str(applied.policy_file),
        "--credentials-dir",
        str(applied.credentials_dir.parent / "elsewhere"),
    )
    assert (
        "no key file" in elsewhere.output
        and "cura, etl, ops, reader-a, reader-b" in elsewhere.output
    )
    secret = applied.keys("reader-a")[1]
    assert secret not in again.output
    listing = _mira(applied.server, "access", "list", str(applied.policy_file), "--json")
    rows = {row["principal"]: row for row in json.loads(listing.output)}
    assert all(row["applied"] and row["keys"] == 1 for row in rows.values())
    assert secret not in listing.output


@pytest.mark.s3
def test_reader_reads_its_cohort_and_snapshot(applied: Applied) -> None:
    reader = applied.as_("reader-a")
    body = reader.get_object(Bucket=RESEARCH_BUCKET, Key="lab/dicom/PA/s1/x1/i1.dcm")["Body"]
    assert body.read() == b"payload lab/dicom/PA/s1/x1/i1.dcm"
    listed = reader.list_objects_v2(Bucket=RESEARCH_BUCKET, Prefix="lab/dicom/PA/")
    assert [o["Key"] for o in listed["Contents"]] == ["lab/dicom/PA/s1/x1/i1.dcm"]
    reader.get_object(Bucket=RESEARCH_BUCKET, Key="lab/snapshots/snap-a/manifest.parquet")
    reader.get_object(Bucket=RESEARCH_BUCKET, Key="lab/snapshots/_index/snap-a.json")
    # the same keys through mira's own store, opened with the reader's credentials
    key_id, secret = applied.keys("reader-a")
    config = S3Config(applied.endpoint, key_id, secret, "us-east-1")
    store = open_store(f"{RESEARCH}/dicom/PA", config)
    assert [o.key for o in store.list("")] == ["s1/x1/i1.dcm"]


@pytest.mark.s3
def test_reader_of_one_cohort_cannot_list_read_or_write_another(applied: Applied) -> None:
    reader = applied.as_("reader-a")
    for method, kwargs in (
        (reader.list_objects_v2, {"Prefix": "lab/dicom/PB/"}),
        (reader.list_objects_v2, {"Prefix": "lab/"}),
        (reader.list_objects_v2, {}),
        (reader.list_object_versions, {"Prefix": "lab/dicom/PB/"}),
        (reader.get_object, {"Key": OBJECT_B}),
        (reader.get_object, {"Key": "lab/snapshots/snap-b/manifest.parquet"}),
        (reader.get_object, {"Key": "lab/snapshots/_index/snap-b.json"}),
        (reader.get_object, {"Key": "lab/catalog/instances/p1.parquet"}),
        (reader.put_object, {"Key": "lab/dicom/PB/new.dcm", "Body": b"x"}),
    ):
        assert _error_code(method, Bucket=RESEARCH_BUCKET, **kwargs) == "AccessDenied", kwargs
    # a HEAD answer has no body to carry a code: the server's bare 403 is all there is
    assert _error_code(reader.head_object, Bucket=RESEARCH_BUCKET, Key=OBJECT_B) == "403"


@pytest.mark.s3
def test_no_reader_can_write_or_delete_anything(applied: Applied) -> None:
    later = datetime.now(UTC) + timedelta(days=1)
    for name, own in (("reader-a", OBJECT_A), ("reader-b", OBJECT_B)):
        reader = applied.as_(name)
        version = applied.owner.head_object(Bucket=RESEARCH_BUCKET, Key=own)["VersionId"]
        for method, kwargs in (
            (reader.put_object, {"Key": own, "Body": b"overwrite"}),
            (reader.put_object, {"Key": "lab/new.dcm", "Body": b"x"}),
            (reader.delete_object, {"Key": own}),
            (reader.delete_object, {"Key": own, "VersionId": version}),
            (reader.copy_object, {"Key": own + ".copy", "CopySource": f"{RESEARCH_BUCKET}/{own}"}),
            (
                reader.put_object_retention,
                {"Key": own, "Retention": {"Mode": "GOVERNANCE", "RetainUntilDate": later}},
            ),
        ):
            assert _error_code(method, Bucket=RESEARCH_BUCKET, **kwargs) == "AccessDenied", kwargs
        # a multi-object delete answers 200 and refuses key by key in its body
        batch = reader.delete_objects(Bucket=RESEARCH_BUCKET, Delete={"Objects": [{"Key": own}]})
        assert [e["Code"] for e in batch["Errors"]] == ["AccessDenied"] and not batch.get("Deleted")
        gateway_put = {"Bucket": GATEWAY_BUCKET, "Key": "site/x", "Body": b"x"}
        assert _error_code(reader.put_object, **gateway_put) == "AccessDenied"
        body = applied.owner.get_object(Bucket=RESEARCH_BUCKET, Key=own)["Body"].read()
        assert body == b"payload " + own.encode()


@pytest.mark.s3
def test_only_the_pipeline_reads_the_gateway(applied: Applied) -> None:
    phi_key = "site/dropzone/b1/Doe^Jane.dcm"
    pipeline = applied.as_("etl")
    assert pipeline.get_object(Bucket=GATEWAY_BUCKET, Key=phi_key)["Body"].read()
    assert pipeline.list_objects_v2(Bucket=GATEWAY_BUCKET, Prefix="site/")["KeyCount"] == 1
    for name in ("cura", "reader-a", "reader-b", "ops"):
        client = applied.as_(name)
        code = _error_code(client.get_object, Bucket=GATEWAY_BUCKET, Key=phi_key)
        assert code == "AccessDenied", name
        code = _error_code(client.list_objects_v2, Bucket=GATEWAY_BUCKET, Prefix="site/")
        assert code == "AccessDenied", name
    # the admin configures the gateway bucket without seeing a key in it
    answer = applied.as_("ops").get_bucket_versioning(Bucket=GATEWAY_BUCKET)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200


@pytest.mark.s3
def test_curator_cannot_shorten_an_object_lock_retention(applied: Applied) -> None:
    curator = applied.as_("cura")
    now = datetime.now(UTC)
    for mode in ("COMPLIANCE", "GOVERNANCE"):
        key = f"lab/snapshots/locked-{mode.lower()}-{uuid.uuid4().hex[:6]}/card.json"
        written = curator.put_object(
            Bucket=RESEARCH_BUCKET,
            Key=key,
            Body=b"{}",
            ObjectLockMode=mode,
            ObjectLockRetainUntilDate=now + timedelta(days=10),
        )
        target = {"Bucket": RESEARCH_BUCKET, "Key": key, "VersionId": written["VersionId"]}
        shorter = {"Mode": mode, "RetainUntilDate": now + timedelta(days=1)}
        code = _error_code(curator.put_object_retention, **target, Retention=shorter)
        assert code == "AccessDenied", mode
        bypass = {"BypassGovernanceRetention": True, "Retention": shorter}
        assert _error_code(curator.put_object_retention, **target, **bypass) == "AccessDenied"
        longer = {"Mode": mode, "RetainUntilDate": now + timedelta(days=20)}
        curator.put_object_retention(**target, Retention=longer)  # a lock may only grow
        kept = curator.get_object_retention(**target)
        assert kept["Retention"]["RetainUntilDate"] > now + timedelta(days=19)
        assert _error_code(curator.delete_object, **target) == "AccessDenied"


@pytest.mark.s3
def test_curator_writes_reviews_and_snapshots_only(applied: Applied) -> None:
    curator = applied.as_("cura")
    curator.put_object(Bucket=RESEARCH_BUCKET, Key="lab/catalog/review/d1.parquet", Body=b"r")
    curator.put_object(Bucket=RESEARCH_BUCKET, Key="lab/catalog/splits/s.parquet", Body=b"s")
    assert curator.get_object(Bucket=RESEARCH_BUCKET, Key=OBJECT_B)["Body"].read()
    # a snapshot locks the data objects it lists: the curator may lock (never unlock) them
    until = datetime.now(UTC) + timedelta(days=1)
    lock = {"Mode": "GOVERNANCE", "RetainUntilDate": until}
    curator.put_object_retention(Bucket=RESEARCH_BUCKET, Key=OBJECT_B, Retention=lock)
    for key in ("lab/dicom/PA/new.dcm", "lab/catalog/instances/p2.parquet"):
        code = _error_code(curator.put_object, Bucket=RESEARCH_BUCKET, Key=key, Body=b"x")
        assert code == "AccessDenied", key
    applied.as_("etl").put_object(Bucket=RESEARCH_BUCKET, Key="lab/dicom/PC/i.dcm", Body=b"d")


@pytest.mark.s3
def test_admin_lifts_a_governance_lock_but_nobody_a_compliance_lock(applied: Applied) -> None:
    now = datetime.now(UTC)
    ops, pipeline = applied.as_("ops"), applied.as_("etl")
    for mode, admin_may in (("GOVERNANCE", True), ("COMPLIANCE", False)):
        key = f"lab/snapshots/admin-{mode.lower()}-{uuid.uuid4().hex[:6]}/card.json"
        written = pipeline.put_object(
            Bucket=RESEARCH_BUCKET,
            Key=key,
            Body=b"{}",
            ObjectLockMode=mode,
            ObjectLockRetainUntilDate=now + timedelta(days=10),
        )
        target = {"Bucket": RESEARCH_BUCKET, "Key": key, "VersionId": written["VersionId"]}
        shorter = {"Mode": mode, "RetainUntilDate": now + timedelta(days=1)}
        bypass = {"BypassGovernanceRetention": True, "Retention": shorter}
        assert _error_code(pipeline.put_object_retention, **target, **bypass) == "AccessDenied"
        if admin_may:
            ops.put_object_retention(**target, **bypass)
        else:
            assert _error_code(ops.put_object_retention, **target, **bypass) == "AccessDenied"


@pytest.mark.s3
def test_pipeline_writes_and_deletes_research_objects(applied: Applied) -> None:
    pipeline = applied.as_("etl")
    key = f"lab/dicom/PC/{uuid.uuid4().hex[:6]}.dcm"
    pipeline.put_object(Bucket=RESEARCH_BUCKET, Key=key, Body=b"deidentified")
    pipeline.delete_object(Bucket=RESEARCH_BUCKET, Key=key)
    pipeline.put_object(Bucket=GATEWAY_BUCKET, Key="site/dropzone/b2/new.dcm", Body=b"upload")
    pipeline.delete_object(Bucket=GATEWAY_BUCKET, Key="site/dropzone/b2/new.dcm")
    code = _error_code(pipeline.get_object, Bucket=RESEARCH_BUCKET, Key=key)
    assert code == "NoSuchKey"


@pytest.mark.s3
def test_rotation_refuses_the_old_keys(applied: Applied) -> None:
    old_client = applied.as_("reader-b")
    old_key = applied.keys("reader-b")[0]
    old_client.get_object(Bucket=RESEARCH_BUCKET, Key=OBJECT_B)
    result = _mira(
        applied.server,
        "access",
        "rotate",
        "reader-b",
        "--credentials-dir",
        str(applied.credentials_dir),
    )
    new_key, new_secret = applied.keys("reader-b")
    assert new_key != old_key and new_key in result.output and new_secret not in result.output
    refused = _error_code(old_client.get_object, Bucket=RESEARCH_BUCKET, Key=OBJECT_B)
    assert refused == "InvalidAccessKeyId"
    applied.as_("reader-b").get_object(Bucket=RESEARCH_BUCKET, Key=OBJECT_B)


@pytest.mark.s3
def test_grant_and_revoke_change_the_file_and_the_server(applied: Applied, tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(applied.policy_file.read_text())
    credentials = str(tmp_path / "keys")
    grant = ["access", "grant", str(policy_file), "visitor", "--role", "reader"]
    _mira(applied.server, *grant, "--cohort", "cohort-b", "--credentials-dir", credentials)
    assert load_policy(policy_file).principals["visitor"].cohorts == ["cohort-b"]
    keys = read_credentials(tmp_path / "keys" / "visitor.env")
    visitor = _client(applied.endpoint, keys.access_key_id, keys.secret_access_key)
    visitor.get_object(Bucket=RESEARCH_BUCKET, Key=OBJECT_B)
    assert _error_code(visitor.get_object, Bucket=RESEARCH_BUCKET, Key=OBJECT_A) == "AccessDenied"
    _mira(applied.server, "access", "revoke", str(policy_file), "visitor")
    assert "visitor" not in load_policy(policy_file).principals
    refused = _error_code(visitor.get_object, Bucket=RESEARCH_BUCKET, Key=OBJECT_B)
    assert refused == "InvalidAccessKeyId"
    assert "visitor" not in IdentityAdmin(applied.server.config).principals()


@pytest.mark.s3
def test_apply_removes_principals_the_policy_dropped(applied: Applied, tmp_path: Path) -> None:
    admin = IdentityAdmin(applied.server.config)
    admin.ensure_user("stale")
    admin.create_key("stale")
    applied.apply()
    assert "stale" not in admin.principals()
    assert set(admin.principals()) >= set(POLICY["principals"])


def test_aws_format_writes_one_document_per_principal(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    result = runner.invoke(
        app,
        ["access", "apply", str(path), "--format", "aws", "--out", str(tmp_path / "docs")],
        env={"MIRA_GATEWAY_URL": GATEWAY, "MIRA_RESEARCH_URL": RESEARCH},
    )
    assert result.exit_code == 0, result.output
    written = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "docs").glob("*.json")}
    assert set(written) == set(POLICY["principals"])
    assert written["etl"]["Version"] == "2012-10-17"
    gateway_readers = [
        name
        for name, document in written.items()
        if any(
            f"arn:aws:s3:::{GATEWAY_BUCKET}/" in resource
            for statement in document["Statement"]
            for resource in statement["Resource"]
        )
    ]
    assert gateway_readers == ["etl"]


def test_the_example_policy_is_valid() -> None:
    example = Path(__file__).parents[1] / "deployments" / "access-policy.example.yaml"
    policy = load_policy(example)
    assert {p.role for p in policy.principals.values()} == set(Role)
    granted = permissions(policy, Stores(gateway=GATEWAY, research=RESEARCH))
    bob = json.dumps(policy_document(granted["bob"]))
    assert "arn:aws:s3:::research-site-b/*" in bob and "lab/dicom/P-1001/*" in bob


def test_a_cohort_store_inside_the_gateway_is_refused() -> None:
    stores = Stores(gateway=GATEWAY, research=RESEARCH)
    for store in (f"s3://{GATEWAY_BUCKET}", f"s3://{GATEWAY_BUCKET}/site/dropzone", GATEWAY):
        policy = AccessPolicy.model_validate(
            {**POLICY, "cohorts": {**POLICY["cohorts"], "leak": {"store": store, "prefixes": [""]}}}
        )
        with pytest.raises(ConfigError, match="overlaps the gateway"):
            permissions(policy, stores)
    beside = {"store": f"s3://{GATEWAY_BUCKET}/other", "prefixes": [""]}
    policy = AccessPolicy.model_validate({**POLICY, "cohorts": {**POLICY["cohorts"], "ok": beside}})
    assert permissions(policy, stores)


@pytest.mark.s3
def test_every_role_appends_its_mira_operations_to_the_audit_log(applied: Applied) -> None:
    from mira.audit import audited, log_objects, verify_log
    from mira.settings import Settings

    before = len(log_objects(open_store(RESEARCH, applied.server.config)))
    for name, key in (("reader-a", "dicom/PA/s1/x1/i1.dcm"), ("cura", "dicom/PB/s2/x2/i2.dcm")):
        key_id, secret = applied.keys(name)
        settings = Settings.model_validate(
            {
                "gateway_url": GATEWAY,
                "research_url": RESEARCH,
                "s3_endpoint_url": applied.endpoint,
                "MIRA_S3_ACCESS_KEY_ID": key_id,
                "MIRA_S3_SECRET_ACCESS_KEY": secret,
                "MIRA_S3_REGION": "us-east-1",
            }
        )
        with audited(settings, "read-one"):
            assert settings.research().read_bytes(key).startswith(b"payload")
    owner_view = open_store(RESEARCH, applied.server.config)
    objects = log_objects(owner_view)
    assert len(objects) == before + 2
    last = [json.loads(owner_view.read_bytes(k)) for _, k in objects[-2:]]
    assert [r["who"] for r in last] == [f"s3:{applied.keys(n)[0]}" for n in ("reader-a", "cura")]
    assert verify_log(owner_view).intact
