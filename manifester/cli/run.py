"""CLI commands ``manifester migrate`` and ``manifester ingest``: parse, call the pipeline, print.

Every ``build`` option (splits, filters, ``--max-entries``, ``--max-bytes``, ...) is
accepted too: the parameters are taken from the ``build`` command itself so the two
never drift apart. Options can also come from the config file's ``[migrate]`` /
``[ingest]`` tables (SOURCE included, as ``source = "s3://..."``).

Exit codes: 0 everything is in the dataset (or nothing new, or a dry run); 1 some
objects failed or remain; 2 bad options; 130 interrupted (state saved: run again).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from typing import Any

import click
import orjson

from ..errors import ConfigError
from .build import build_command

__all__ = ["commands", "ingest_command", "migrate_command"]

# Options of `build` that have no meaning here: migrate writes its manifests to the
# manifest store, and computes URL lifetimes itself (--url-lifetime fixes them).
_NOT_FROM_BUILD = {"source", "out", "as_json", "expires"}


def _with_build_options(command: click.Command) -> click.Command:
    """Append copies of the ``build`` command's options to ``command``."""
    own = {p.name for p in command.params}
    for param in build_command.params:
        if param.name in _NOT_FROM_BUILD or param.name in own:
            continue
        command.params.append(copy.copy(param))
    return command


def _common(f: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in reversed(
        [
            click.argument("source", required=False),
            click.option(
                "--manifest-store", "manifest_store", metavar="URI",
                help="s3://bucket/prefix or gs://bucket/prefix for the manifests (written private, presigned for Theos).",
            ),
            click.option(
                "--manifest-base-url", "manifest_base_url", metavar="URL",
                help="Only with a local-folder --manifest-store: the http(s) URL at which that folder is served.",
            ),
            click.option("--state", "state", metavar="PATH", type=click.Path(dir_okay=False),
                         help="Ledger file (default: $MANIFESTER_STATE or ~/.local/state/manifester/ledger.sqlite)."),
            click.option("--canary", type=int, default=20, show_default=True,
                         help="Images in the first, small shard (0: no canary)."),
            click.option("--url-lifetime", "url_lifetime", metavar="DURATION",
                         help="Fix the presigned URL lifetime (90s, 15m, 2h); default: computed from the expected wait."),
            click.option("--changed", type=click.Choice(["skip", "resend"]), default="skip", show_default=True,
                         help="Objects whose ETag changed since they were sent: skip them, or send them again."),
            click.option("--dry-run", "dry_run", is_flag=True, default=False,
                         help="Print the plan (counts per split, shards, bytes, URL lifetimes); send and write nothing."),
            click.option("--stop-remote", "stop_remote", is_flag=True, default=False,
                         help="On Ctrl-C/SIGTERM also stop the upload running on the server."),
            click.option("--progress/--no-progress", "progress", default=None,
                         help="Progress bars on stderr (default: when stderr is a terminal)."),
            click.option("--json", "as_json", is_flag=True, default=False, help="Print the summary as JSON."),
        ]
    ):
        f = decorator(f)
    return f


def _run(kind: str, source: str | None, as_json: bool, progress: bool | None, **kwargs: Any) -> None:
    from ..pipeline import Summary, ingest, migrate

    if not source:
        raise ConfigError(
            f"{kind}: no SOURCE given",
            hint=f"pass s3://bucket[/prefix], gs://bucket[/prefix] or a folder, or set source in the [{kind}] config table",
        )
    if progress is None:
        progress = sys.stderr.isatty() and not as_json
    # click gives () for repeatable options that were not used; the library wants None
    options = {k: (v if v != () else None) for k, v in kwargs.items()}
    func: Callable[..., Summary] = migrate if kind == "migrate" else ingest
    summary = func(source, progress=progress, **options)
    if as_json:
        click.echo(orjson.dumps(summary.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in summary.lines():
            click.echo(line)
    if summary.exit_code:
        sys.exit(summary.exit_code)


@click.command(
    "migrate",
    epilog="""\b
Examples:
  manifester migrate s3://photos/cats --dataset Cats --manifest-store s3://photos-manifests/theos
  manifester migrate gs://photos --dataset-id 42 --manifest-store gs://manifests/theos --dry-run
  manifester migrate s3://photos --dataset Cats --manifest-store s3://m/theos --split train=90,test=10 --json
""",
)
@_common
@click.option("--dataset", "dataset", metavar="NAME", help="Dataset name: found, or created if missing.")
@click.option("--dataset-id", "dataset_id", metavar="ID", help="Existing dataset id.")
def migrate_command(source: str | None, as_json: bool, progress: bool | None, **kwargs: Any) -> None:
    """Send every image of SOURCE to a Theos dataset, one shard at a time, resumably.

    SOURCE is s3://bucket[/prefix], gs://bucket[/prefix] or a folder. Scans, splits and
    validates as `build` does, sends a small canary shard first, then the rest; records
    every step in the ledger, so running the same command again resumes (and sends
    nothing twice). Credentials: THEOS_PROJECT_KEY / THEOS_API_TOKEN or [theos] in --config.
    """
    if kwargs.get("dataset") and kwargs.get("dataset_id"):
        raise ConfigError("give --dataset NAME or --dataset-id ID, not both")
    _run("migrate", source, as_json, progress, **kwargs)


@click.command(
    "ingest",
    epilog="""\b
Examples:
  manifester ingest s3://photos/incoming --dataset-id 42 --manifest-store s3://photos-manifests/theos
  manifester --config /etc/manifester.toml ingest        # everything from the [ingest] table
  */5 * * * *  manifester --config /etc/manifester.toml ingest --json >> /var/log/manifester.log
""",
)
@_common
@click.option("--dataset-id", "dataset_id", metavar="ID", help="Existing dataset id (required).")
def ingest_command(source: str | None, as_json: bool, progress: bool | None, **kwargs: Any) -> None:
    """Send only the objects of SOURCE not yet in the dataset: the scheduled job.

    Safe to run every few minutes: a lock refuses a second concurrent run on the same
    ledger, and "nothing new" exits 0. Objects whose ETag changed are re-sent only with
    --changed resend.
    """
    if not kwargs.get("dataset_id"):
        raise ConfigError("ingest needs --dataset-id ID", hint="or set dataset_id in the [ingest] config table")
    _run("ingest", source, as_json, progress, **kwargs)


_with_build_options(migrate_command)
_with_build_options(ingest_command)

commands: list[click.Command] = [migrate_command, ingest_command]
