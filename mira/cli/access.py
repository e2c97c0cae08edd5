"""``mira access ...``: cohorts and roles from a policy file, enforced by the object store."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mira.access import AccessPolicy, Principal, Role, Stores, load_policy, permissions, save_policy
from mira.cli.common import out, settings_of
from mira.settings import Settings

access_app = typer.Typer(
    help="Cohorts and roles (pipeline, curator, reader, admin) from one policy file, turned "
    "into the object store's own users and policies, so that the server refuses what a role "
    "may not do. See docs/security.md.",
    no_args_is_help=True,
)

PolicyFile = Annotated[
    Path,
    typer.Argument(help="The access policy (YAML); `mira access schema` prints its schema."),
]
CredentialsDir = Annotated[
    Path,
    typer.Option(
        "--credentials-dir",
        envvar="MIRA_CREDENTIALS_DIR",
        help="Where new keys are written, one <principal>.env file each, mode 0600.",
    ),
]
DEFAULT_CREDENTIALS = Path("~/.config/mira/credentials").expanduser()


class PolicyFormat(StrEnum):
    """Where ``apply`` puts the policy."""

    seaweedfs = "seaweedfs"
    aws = "aws"


def _stores(settings: Settings) -> Stores:
    return Stores(gateway=settings.gateway_url, research=settings.research_url)


def _documents(policy: AccessPolicy, settings: Settings) -> dict[str, dict[str, object]]:
    from storage.iam import policy_document

    return {
        name: policy_document(granted)
        for name, granted in permissions(policy, _stores(settings)).items()
    }


@access_app.command("schema")
def schema() -> None:
    """Print the JSON schema of the policy file."""
    from mira.access import policy_schema

    typer.echo(json.dumps(policy_schema(), indent=1))


@access_app.command("roles")
def roles() -> None:
    """What each role may do (fixed by mira; the policy file binds principals to roles)."""
    from mira.access import ROLE_SUMMARY

    view = Table(title="roles")
    view.add_column("role")
    view.add_column("may", overflow="fold")
    for role, summary in ROLE_SUMMARY.items():
        view.add_row(role.value, summary)
    out.print(view)


@access_app.command("apply")
def apply(
    ctx: typer.Context,
    policy_file: PolicyFile,
    policy_format: Annotated[
        PolicyFormat,
        typer.Option(
            "--format",
            help="seaweedfs: users, keys and policies through the server's IAM API (the "
            "configured S3 endpoint and keys); aws: write one IAM policy document per "
            "principal (for AWS S3 or MinIO) to --out and touch no server.",
        ),
    ] = PolicyFormat.seaweedfs,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder of the documents written by --format aws.")
    ] = Path("access-policies"),
    credentials_dir: CredentialsDir = DEFAULT_CREDENTIALS,
) -> None:
    """Turn the policy file into the store's controls; users the policy no longer names are
    removed. Running it again changes nothing. Secrets go to files only, never to the screen."""
    from storage.iam import IdentityAdmin, apply_documents

    settings = settings_of(ctx)
    documents = _documents(load_policy(policy_file), settings)
    if policy_format is PolicyFormat.aws:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, document in documents.items():
            (out_dir / f"{name}.json").write_text(json.dumps(document, indent=1) + "\n")
        out.print(f"{len(documents)} IAM policy documents written to {out_dir}")
        return
    report = apply_documents(IdentityAdmin(settings.s3_config()), documents, credentials_dir)
    for label, names in (
        ("created", report.created),
        ("updated", report.updated),
        ("removed", report.removed),
    ):
        if names:
            out.print(f"{label}: {', '.join(names)}")
    for name, path in report.credentials.items():
        out.print(f"keys of {name}: {path}", soft_wrap=True)
    unchanged = len(documents) - len(report.created) - len(report.updated)
    out.print(f"{len(documents)} principals applied ({unchanged} already up to date)")
    keyless = [n for n in documents if not (credentials_dir / f"{n}.env").exists()]
    if keyless:
        out.print(
            f"no key file in {credentials_dir} for {', '.join(sorted(keyless))} (made "
            "elsewhere?): `mira access rotate NAME` issues new keys",
            soft_wrap=True,
        )


@access_app.command("list")
def list_principals(
    ctx: typer.Context,
    policy_file: PolicyFile,
    json_output: Annotated[bool, typer.Option("--json", help="JSON records.")] = False,
) -> None:
    """Each principal of the policy and of the server: role, cohorts, keys, whether the
    server's policy is the one the file asks for."""
    from mira.errors import ObjectNotFound
    from storage.iam import IdentityAdmin, normalized

    settings = settings_of(ctx)
    policy = load_policy(policy_file)
    documents = _documents(policy, settings)
    admin = IdentityAdmin(settings.s3_config())
    rows: list[dict[str, Any]] = []
    for name in sorted(set(policy.principals) | set(admin.principals())):
        principal = policy.principals.get(name)
        try:
            identity = admin.identity(name)
            keys, applied = len(identity.access_key_ids), identity.policy
        except ObjectNotFound:
            keys, applied = 0, None
        in_sync = (
            principal is not None
            and applied is not None
            and normalized(applied) == normalized(documents[name])
        )
        rows.append(
            {
                "principal": name,
                "role": principal.role.value if principal else None,
                "cohorts": list(principal.cohorts) if principal else [],
                "keys": keys,
                "applied": in_sync,
            }
        )
    if json_output:
        typer.echo(json.dumps(rows, indent=1))
        return
    view = Table(title="principals")
    for column in ("principal", "role", "cohorts", "keys", "applied"):
        view.add_column(column)
    for row in rows:
        view.add_row(
            str(row["principal"]),
            str(row["role"] or "(not in the policy)"),
            ", ".join(row["cohorts"]),
            str(row["keys"]),
            "yes" if row["applied"] else "[red]no[/]",
        )
    out.print(view)


@access_app.command("grant")
def grant(
    ctx: typer.Context,
    policy_file: PolicyFile,
    principal: Annotated[str, typer.Argument(help="Principal name (a-z, 0-9, _ and -).")],
    role: Annotated[Role, typer.Option(help="The principal's role.")],
    cohort: Annotated[
        list[str] | None, typer.Option(help="A cohort of a reader; repeat for more.")
    ] = None,
    credentials_dir: CredentialsDir = DEFAULT_CREDENTIALS,
) -> None:
    """Bind a principal to a role (and cohorts) in the policy file, then apply it on the
    server; a new principal's keys go to --credentials-dir."""
    from storage.iam import IdentityAdmin, write_credentials

    settings = settings_of(ctx)
    policy = load_policy(policy_file).with_principal(
        principal, Principal(role=role, cohorts=cohort or [])
    )
    document = _documents(policy, settings)[principal]
    admin = IdentityAdmin(settings.s3_config())
    admin.ensure_user(principal)
    admin.put_policy(principal, document)
    save_policy(policy, policy_file)
    if not admin.identity(principal).access_key_ids:
        path = write_credentials(credentials_dir, admin.create_key(principal))
        out.print(f"keys of {principal}: {path}", soft_wrap=True)
    out.print(f"{principal}: {role.value} {', '.join(cohort or [])}".rstrip())


@access_app.command("revoke")
def revoke(
    ctx: typer.Context,
    policy_file: PolicyFile,
    principal: Annotated[str, typer.Argument(help="Principal name.")],
) -> None:
    """Remove a principal from the policy file and its user, keys and policy from the server:
    its keys are refused at once."""
    from storage.iam import IdentityAdmin

    policy = load_policy(policy_file).without_principal(principal)
    IdentityAdmin(settings_of(ctx).s3_config()).remove(principal)
    save_policy(policy, policy_file)
    out.print(f"{principal}: revoked")


@access_app.command("rotate")
def rotate(
    ctx: typer.Context,
    principal: Annotated[str, typer.Argument(help="Principal name.")],
    credentials_dir: CredentialsDir = DEFAULT_CREDENTIALS,
    show_secret: Annotated[
        bool, typer.Option("--show-secret", help="Also print the new secret key.")
    ] = False,
) -> None:
    """New keys for a principal, written to --credentials-dir; the old keys are deleted and
    refused by the server from then on."""
    from storage.iam import IdentityAdmin

    admin = IdentityAdmin(settings_of(ctx).s3_config())
    credentials, path = admin.rotate(principal, credentials_dir)
    out.print(
        f"keys of {principal} rotated: {path} (access key {credentials.access_key_id})",
        soft_wrap=True,
    )
    if show_secret:
        typer.echo(f"AWS_SECRET_ACCESS_KEY={credentials.secret_access_key}")


def register(app: typer.Typer) -> None:
    app.add_typer(access_app, name="access")
