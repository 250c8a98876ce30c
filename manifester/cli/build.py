"""CLI command ``manifester build``: parse flags, call :func:`manifester.build`, print the plan."""

from __future__ import annotations

from typing import Any

import click
import orjson

from ..builder import Plan, build
from ..split import DEFAULT_SPLIT

__all__ = ["build_command", "commands", "empty_warning", "format_plan"]


@click.command(
    "build",
    epilog="""\b
Examples:
  manifester build s3://photos/cats --out manifests/
  manifester build gs://photos --out m/ --split train=90,test=10 --seed v2 --group-by '^([^/]+)/'
  manifester build ./images --out m/ --url-template 'https://cdn.example.com/{key}' --json
""",
)
@click.argument("source")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Folder for manifest-NNNNN.json and plan.json.")
@click.option("--split", "split", default=DEFAULT_SPLIT, show_default=True, help="Split weights NAME=WEIGHT,... (names train, valid, test).")
@click.option("--seed", default="", help="Text mixed into the split hash; change it to reshuffle.")
@click.option("--group-by", "group_by", default=None, metavar="REGEX", help="Keys with the same group (first capture group, else the match) share a split.")
@click.option("--split-from-path", "split_from_path", is_flag=True, default=False, help="Take the split from a train/valid/val/validation/test folder in the key; hash the rest.")
@click.option("--include", multiple=True, metavar="GLOB", help="Keep only keys matching a glob (relative to the source prefix; repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Drop keys matching a glob (repeatable).")
@click.option("--extensions", default=None, metavar="LIST", help="Comma-separated extensions to keep ('*' for all). Default: jpg,jpeg,png,webp,bmp,gif,tif,tiff.")
@click.option("--external-id", "external_id", type=click.Choice(["uri", "key"]), default="uri", show_default=True, help="uri: UUIDv5 of the object's URI; key: the key itself.")
@click.option("--urls", "urls", type=click.Choice(["presigned", "public"]), default=None, help="URL form for buckets (default: presigned).")
@click.option("--expires", default="24h", show_default=True, help="Lifetime of presigned URLs: 90s, 15m, 24h, 7d.")
@click.option("--url-template", "url_template", default=None, metavar="TEMPLATE", help="URL per key, e.g. 'https://cdn.example.com/{key}' (required for local folders).")
@click.option("--max-entries", "max_entries", type=int, default=100_000, show_default=True, help="Entries per manifest (at most 100000).")
@click.option(
    "--listing",
    default=None,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Read the objects from FILE (keys one per line, JSONL, or an S3 Inventory CSV; .gz ok) instead of listing SOURCE.",
)
@click.option("--max-bytes", "max_bytes", type=int, default=100_000_000, show_default=True, help="Bytes per manifest, exact (at most 100000000).")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print the plan as JSON instead of a summary.")
def build_command(source: str, out: str, as_json: bool, **options: Any) -> None:
    """Write Theos manifest files for SOURCE (s3://bucket[/prefix], gs://bucket[/prefix] or a folder).

    Lists the objects, assigns each a repeatable split, makes its URL and external id,
    validates every entry and writes DIR/manifest-00001.json, ... plus DIR/plan.json.
    Nothing is written if any entry is invalid.
    """
    plan = build(source, out, **options)
    if as_json:
        click.echo(orjson.dumps(plan.to_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_plan(plan))
    warning = empty_warning(plan, source)
    if warning:
        # still exit 0 (an empty prefix is not an error), but on stderr so that it shows in
        # cron mail and next to --json output without spoiling it
        click.echo(warning, err=True)


def empty_warning(plan: Plan, source: str | None = None) -> str | None:
    """The stderr warning for a build that kept nothing, or ``None`` if it kept something.

    ``source`` is the source as the user typed it (default: the plan's URI).

    >>> empty_warning(plan, "s3://photos/cats")  # doctest: +SKIP
    'warning: no objects kept from s3://photos/cats: 12 listed, 12 skipped (not-included 12) — check the prefix and filters'
    """
    if plan.totals.get("entries", 0):
        return None
    listed = plan.totals.get("listed", 0)
    detail = f"{listed:,} listed"
    if plan.skipped:
        reasons = ", ".join(f"{reason} {n:,}" for reason, n in plan.skipped.items())
        detail += f", {plan.totals.get('skipped', sum(plan.skipped.values())):,} skipped ({reasons})"
    return f"warning: no objects kept from {source or plan.source}: {detail} — check the prefix and filters"


def format_plan(plan: Plan) -> str:
    """A short human summary of a plan."""
    counts = ", ".join(f"{name} {n:,}" for name, n in plan.counts.items())
    lines = [
        f"source   {plan.source}",
        f"entries  {plan.totals['entries']:,} of {plan.totals['listed']:,} listed ({counts})",
        f"shards   {plan.totals['shards']} in {plan.out_dir}",
    ]
    for shard in plan.shards:
        lines.append(f"  {shard['name']}  {shard['entries']:>9,} entries  {shard['bytes']:>13,} bytes")
    if plan.skipped:
        lines.append(f"skipped  {plan.totals['skipped']:,}")
        for reason, n in plan.skipped.items():
            examples = plan.skipped_examples.get(reason) or []
            shown = ", ".join(repr(e) for e in examples[:3])
            lines.append(f"  {reason:<24} {n:>7,}" + (f"  e.g. {shown}" if shown else ""))
    lines.append(f"plan     {plan.out_dir}/plan.json")
    return "\n".join(lines)


commands: list[click.Command] = [build_command]
