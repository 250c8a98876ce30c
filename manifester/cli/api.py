"""CLI commands mirroring the Theos Datasets API page: datasets, classes, examples, tasks, upload.

Every command parses its flags, makes one :class:`manifester.theos.TheosClient` call
(plus waiting for a task where asked) and prints the answer: human-readable by
default, JSON with ``--json``. ``--api-url`` and ``--project-key`` may be given on the
group or on the command; the API token is never a flag: it comes from
``THEOS_API_TOKEN`` or the ``[theos]`` table of the config file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from ..config import theos_settings
from ..errors import ConfigError, TaskFailedError, ValidationError

__all__ = ["classes", "commands", "datasets", "examples", "tasks", "upload"]

# Imported lazily: the client pulls in httpx, which `manifester --help` does not need.
if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..theos import Task, TheosClient

_SPLITS = click.Choice(["train", "valid", "test"])


# --------------------------------------------------------------------------- plumbing


def _plain(value: Any) -> Any:
    """Records as JSON-ready values; the ``raw`` server object is left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "raw"}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _print_json(value: Any) -> None:
    click.echo(json.dumps(_plain(value), indent=2, ensure_ascii=False))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _group_api_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--project-key", default=None, help="Theos project key (env THEOS_PROJECT_KEY).")(f)
    f = click.option("--api-url", default=None, help="API base URL (env THEOS_API_URL; default https://api.theos.ai).")(f)
    return f


def _api_group(name: str, help_text: str) -> click.Group:
    """A command group that accepts --api-url/--project-key for all its commands."""

    @click.group(name=name, help=help_text)
    @_group_api_options
    @click.pass_context
    def group(ctx: click.Context, api_url: str | None, project_key: str | None) -> None:
        obj = ctx.ensure_object(dict)
        if api_url:
            obj["api_url"] = api_url
        if project_key:
            obj["project_key"] = project_key

    return group


def _client(api_url: str | None, project_key: str | None) -> TheosClient:
    from ..theos import TheosClient

    ctx = click.get_current_context()
    obj = ctx.find_object(dict) or {}
    settings = theos_settings(
        api_url=api_url or obj.get("api_url"),
        project_key=project_key or obj.get("project_key"),
        config=obj.get("config") or {},
    )
    return TheosClient(settings)


def _api_command(group: click.Group, name: str) -> Callable[[Callable[..., None]], click.Command]:
    """Register ``f(theos, as_json, **options)`` as ``group name`` with the shared options."""

    def decorate(f: Callable[..., None]) -> click.Command:
        @functools.wraps(f)
        def run(api_url: str | None, project_key: str | None, as_json: bool, **kwargs: Any) -> None:
            with _client(api_url, project_key) as theos:
                f(theos, as_json, **kwargs)

        with_json = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(run)
        return group.command(name=name)(_group_api_options(with_json))

    return decorate


def _follow(theos: TheosClient, task_id: str, *, timeout: float | None, poll_interval: float, desc: str) -> Task:
    """Wait for a task with a tqdm bar (on stderr, only on a terminal) fed by progress current/total."""
    from tqdm import tqdm  # type: ignore[import-untyped]

    with tqdm(total=None, desc=desc, unit="img", file=sys.stderr, disable=None, leave=False) as bar:

        def show(task: Task) -> None:
            if task.total and bar.total != task.total:
                bar.total = task.total
            if task.current is not None:
                bar.n = task.current
            bar.set_postfix_str(task.state, refresh=False)
            bar.refresh()

        return theos.wait_task(task_id, poll_interval=poll_interval, timeout=timeout, on_progress=show)


def _task_line(task: Task) -> str:
    progress = ""
    if task.total:
        progress = f" {task.current or 0}/{task.total}"
        if task.percent is not None:
            progress += f" ({task.percent:.1f}%)"
    return f"task {task.task_id}: {task.state}{progress}"


def _redact_strings(value: Any) -> Any:
    """Every string of a JSON-ready value with URL query strings (signatures) removed."""
    if isinstance(value, str):
        return _redact(value)
    if isinstance(value, list):
        return [_redact_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_strings(v) for k, v in value.items()}
    return value


def _print_task(task: Task, as_json: bool) -> None:
    if as_json:
        # an upload's result names failed images by their presigned URL: never print a signature
        click.echo(json.dumps(_redact_strings(_plain(task)), indent=2, ensure_ascii=False))
        return
    click.echo(_task_line(task))
    if task.result is not None:
        result = task.result
        if isinstance(result, dict) and {"created", "duplicates", "failed"} & result.keys():
            failed = result.get("failed") or []
            click.echo(
                f"  created: {result.get('created', '?')}, duplicates: {result.get('duplicates', '?')}, "
                f"failed: {len(failed) if isinstance(failed, list) else failed}"
            )
            for item in failed[:20] if isinstance(failed, list) else []:
                if isinstance(item, dict):
                    who = item.get("external_id") or _redact(str(item.get("url", "?")))
                    click.echo(f"    - {who}: {_redact(str(item.get('error', '')))}")
            if isinstance(failed, list) and len(failed) > 20:
                click.echo(f"    ... and {len(failed) - 20} more (use --json for all)")
        else:
            click.echo(f"  result: {_redact(json.dumps(result) if not isinstance(result, str) else result)[:500]}")


def _redact(text: str) -> str:
    from ..theos import redact_urls

    return redact_urls(text)


def _check_task(task: Task) -> None:
    """Exit non-zero (after printing) when a task did not succeed."""
    if not task.succeeded:
        detail = task.result if isinstance(task.result, str) else json.dumps(task.result)
        raise TaskFailedError(
            f"task {task.task_id} ended {task.state}" + (f": {_redact(detail)[:300]}" if task.result is not None else ""),
            task_id=task.task_id,
            state=task.state,
            hint="see the task's result above; fix the cause and start it again",
        )


def _wait_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--poll-interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
                     help="First polling interval in seconds (grows up to 10 s while nothing changes).")(f)
    f = click.option("--timeout", type=click.FloatRange(min=0), default=None,
                     help="Give up waiting after this many seconds (the task keeps running).")(f)
    return f


# --------------------------------------------------------------------------- datasets

datasets = _api_group(
    "datasets",
    """Create, list, inspect and delete datasets.

    \b
    Example:
      manifester datasets create Vehicles
      manifester datasets list --json
    """,
)


@_api_command(datasets, "create")
@click.argument("name")
def _datasets_create(theos: TheosClient, as_json: bool, name: str) -> None:
    """Create a dataset named NAME.

    \b
    Example:
      manifester datasets create Vehicles
    """
    ds = theos.create_dataset(name)
    if as_json:
        _print_json(ds)
    else:
        click.echo(f"created dataset {ds.id} ({ds.name})")


@_api_command(datasets, "list")
def _datasets_list(theos: TheosClient, as_json: bool) -> None:
    """List the project's datasets with their counts per split.

    \b
    Example:
      manifester datasets list
    """
    items = theos.list_datasets()
    if as_json:
        _print_json(items)
        return
    if not items:
        click.echo("no datasets")
        return
    _table(
        ["ID", "NAME", "TRAIN", "VALID", "TEST", "CLASSES", "CREATED"],
        [[d.id, d.name, d.counts.get("train", 0), d.counts.get("valid", 0), d.counts.get("test", 0),
          len(d.classes), d.created or ""] for d in items],
    )


def _print_dataset(ds: Any) -> None:
    click.echo(f"dataset {ds.id}: {ds.name}")
    if ds.created:
        click.echo(f"created: {ds.created}")
    splits = ", ".join(f"{k} {v}" for k, v in ds.counts.items()) or "none"
    click.echo(f"examples: {splits} (total {ds.total})")
    if ds.classes:
        click.echo("classes:")
        _table(["  ID", "DB_ID", "NAME", "COLOR", "TEXT"],
               [[f"  {c.id}", c.db_id, c.name, c.color, "yes" if c.with_text else "no"] for c in ds.classes])
    else:
        click.echo("classes: none")


@_api_command(datasets, "get")
@click.argument("dataset_id")
def _datasets_get(theos: TheosClient, as_json: bool, dataset_id: str) -> None:
    """Show dataset DATASET_ID: counts per split and classes (with their db_id).

    \b
    Example:
      manifester datasets get 42
    """
    ds = theos.get_dataset(dataset_id)
    if as_json:
        _print_json(ds)
    else:
        _print_dataset(ds)


@_api_command(datasets, "delete")
@click.argument("dataset_id")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def _datasets_delete(theos: TheosClient, as_json: bool, dataset_id: str, yes: bool) -> None:
    """Delete dataset DATASET_ID and all its examples (asks first unless --yes).

    \b
    Example:
      manifester datasets delete 42 --yes
    """
    if not yes:
        click.confirm(f"delete dataset {dataset_id} and all its examples?", abort=True, err=True)
    theos.delete_dataset(dataset_id)
    if as_json:
        _print_json({"deleted": dataset_id})
    else:
        click.echo(f"deleted dataset {dataset_id}")


# --------------------------------------------------------------------------- classes

classes = _api_group(
    "classes",
    """Create, edit, delete and merge the classes of a dataset.

    \b
    Example:
      manifester classes create 42 --name Car --color '#4AFFBA'
      manifester classes merge 42 3 5 --name Vehicle --color '#A8327F'
    """,
)


def _print_class(verb: str, cls: Any, as_json: bool) -> None:
    if as_json:
        _print_json(cls)
    else:
        click.echo(f"{verb} class {cls.name} (id {cls.id}, db_id {cls.db_id}, color {cls.color}"
                   f"{', with text' if cls.with_text else ''})")


@_api_command(classes, "create")
@click.argument("dataset_id")
@click.option("--name", required=True, help="Name of the new class.")
@click.option("--color", required=True, help="Hexadecimal color, e.g. '#4AFFBA'.")
@click.option("--with-text", is_flag=True, help="The class is used for OCR labeling.")
def _classes_create(theos: TheosClient, as_json: bool, dataset_id: str, name: str, color: str, with_text: bool) -> None:
    """Create a class in dataset DATASET_ID.

    \b
    Example:
      manifester classes create 42 --name Car --color '#4AFFBA'
    """
    _print_class("created", theos.create_class(dataset_id, name, color, with_text=with_text), as_json)


@_api_command(classes, "edit")
@click.argument("dataset_id")
@click.argument("db_id", type=int)
@click.option("--name", default=None, help="New name.")
@click.option("--color", default=None, help="New hexadecimal color.")
def _classes_edit(
    theos: TheosClient, as_json: bool, dataset_id: str, db_id: int, name: str | None, color: str | None
) -> None:
    """Rename or recolour class DB_ID of dataset DATASET_ID.

    \b
    Example:
      manifester classes edit 42 17 --name Ferrari
    """
    if name is None and color is None:
        raise click.UsageError("give --name and/or --color")
    _print_class("edited", theos.edit_class(dataset_id, db_id, name=name, color=color), as_json)


def _run_task(theos: TheosClient, as_json: bool, task_id: str, wait: bool, timeout: float | None,
              poll_interval: float, desc: str) -> None:
    if not wait:
        if as_json:
            _print_json({"task_id": task_id})
        else:
            click.echo(task_id)
        return
    task = _follow(theos, task_id, timeout=timeout, poll_interval=poll_interval, desc=desc)
    _print_task(task, as_json)
    _check_task(task)


@_api_command(classes, "delete")
@click.argument("dataset_id")
@click.argument("db_ids", nargs=-1, required=True, type=int)
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the deletion task to end.")
@_wait_options
def _classes_delete(theos: TheosClient, as_json: bool, dataset_id: str, db_ids: tuple[int, ...], wait: bool,
                    timeout: float | None, poll_interval: float) -> None:
    """Delete classes DB_IDS... of dataset DATASET_ID (and all their labels).

    \b
    Example:
      manifester classes delete 42 1 4 6
      manifester classes delete 42 7 --no-wait     # prints the task id
    """
    task_id = theos.delete_classes(dataset_id, list(db_ids))
    _run_task(theos, as_json, task_id, wait, timeout, poll_interval, "deleting classes")


@_api_command(classes, "merge")
@click.argument("dataset_id")
@click.argument("db_ids", nargs=-1, required=True, type=int)
@click.option("--name", required=True, help="Name of the merged class.")
@click.option("--color", required=True, help="Hexadecimal color of the merged class.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the merge task to end.")
@_wait_options
def _classes_merge(theos: TheosClient, as_json: bool, dataset_id: str, db_ids: tuple[int, ...], name: str,
                   color: str, wait: bool, timeout: float | None, poll_interval: float) -> None:
    """Merge classes DB_IDS... (2 or more) of dataset DATASET_ID into a new class.

    \b
    Example:
      manifester classes merge 42 1 4 6 --name Truck --color '#A8327F'
    """
    task_id = theos.merge_classes(dataset_id, list(db_ids), name, color)
    _run_task(theos, as_json, task_id, wait, timeout, poll_interval, "merging classes")


# --------------------------------------------------------------------------- examples

examples = _api_group(
    "examples",
    """List and read examples, set their labels, skip them (by id or --external-id).

    \b
    Example:
      manifester examples list 42 --split valid --all
      manifester examples get 42 --external-id cats/001.jpg
    """,
)


def _example_rows(items: Sequence[Any]) -> list[list[Any]]:
    rows = []
    for e in items:
        size = f"{e.width}x{e.height}" if e.width and e.height else ""
        status = "skipped" if e.skipped else ("labeled" if e.labeled else "")
        rows.append([e.id, e.external_id or "", e.split or "", size, len(e.labels), status])
    return rows


_EXAMPLE_HEADERS = ["ID", "EXTERNAL_ID", "SPLIT", "SIZE", "LABELS", "STATUS"]


@_api_command(examples, "list")
@click.argument("dataset_id")
@click.option("--split", type=_SPLITS, default="train", show_default=True, help="Which split.")
@click.option("--page", type=click.IntRange(min=1), default=None, help="Page number (100 examples a page; default 1).")
@click.option("--all", "all_pages", is_flag=True, help="Every page of the split.")
def _examples_list(theos: TheosClient, as_json: bool, dataset_id: str, split: str, page: int | None,
                   all_pages: bool) -> None:
    """List the examples of a split of dataset DATASET_ID, a page (100) at a time or --all.

    \b
    Example:
      manifester examples list 42 --split valid --page 2
      manifester examples list 42 --all --json > train.json
    """
    if all_pages and page is not None:
        raise click.UsageError("give --page or --all, not both")
    if all_pages:
        items = list(theos.iter_examples(dataset_id, split))
        if as_json:
            _print_json(items)
            return
        _table(_EXAMPLE_HEADERS, _example_rows(items))
        click.echo(f"{len(items)} {split} example(s)")
        return
    result = theos.list_examples(dataset_id, split, page or 1)
    if as_json:
        _print_json(result)
        return
    _table(_EXAMPLE_HEADERS, _example_rows(result.examples))
    count = f" ({result.count} {split} examples)" if result.count is not None else ""
    click.echo(f"page {result.page} of {result.page_count}{count}")


def _example_target(example_id: str | None, external_id: str | None) -> dict[str, Any]:
    if (example_id is None) == (external_id is None):
        raise click.UsageError("give exactly one of EXAMPLE_ID and --external-id")
    return {"example_id": example_id, "external_id": external_id}


def _print_example(e: Any, as_json: bool) -> None:
    if as_json:
        _print_json(e)
        return
    click.echo(f"example {e.id}" + (f" (external_id {e.external_id})" if e.external_id else ""))
    click.echo(f"split: {e.split or '?'}, size: {e.width or '?'}x{e.height or '?'}, "
               f"labeled: {'yes' if e.labeled else 'no'}, skipped: {'yes' if e.skipped else 'no'}")
    if e.image:
        click.echo(f"image: {_redact(e.image)}")
    click.echo(f"labels ({len(e.labels)}): {json.dumps(e.labels)}")


@_api_command(examples, "get")
@click.argument("dataset_id")
@click.argument("example_id", required=False)
@click.option("--external-id", default=None, help="Find the example by the external_id of its manifest entry.")
def _examples_get(theos: TheosClient, as_json: bool, dataset_id: str, example_id: str | None,
                  external_id: str | None) -> None:
    """Show one example of dataset DATASET_ID, by EXAMPLE_ID or --external-id.

    \b
    Example:
      manifester examples get 42 1234
      manifester examples get 42 --external-id cats/001.jpg
    """
    target = _example_target(example_id, external_id)
    _print_example(theos.get_example(dataset_id, target["example_id"], external_id=target["external_id"]), as_json)


def _read_labels(labels: str | None, labels_file: str | None) -> list[dict[str, Any]]:
    if (labels is None) == (labels_file is None):
        raise click.UsageError("give exactly one of --labels and --labels-file")
    source = "--labels"
    if labels_file is not None:
        source = labels_file
        try:
            with click.open_file(labels_file, encoding="utf-8") as fh:
                labels = fh.read()
        except OSError as exc:
            raise ConfigError(f"cannot read labels file {labels_file}: {exc.strerror}", hint="check the path") from None
    try:
        value = json.loads(labels or "")
    except ValueError as exc:
        raise ValidationError(f"{source} is not valid JSON: {exc}",
                              hint='labels are a JSON list, e.g. [{"class_id": 0, "x": 1, "y": 2, "width": 3, "height": 4}]') from None
    if not isinstance(value, list):
        raise ValidationError(f"{source} must be a JSON list of boxes", hint='e.g. [{"class_id": 0, "x": 1, "y": 2, "width": 3, "height": 4}]')
    return value


@_api_command(examples, "labels")
@click.argument("dataset_id")
@click.argument("example_id", required=False)
@click.option("--external-id", default=None, help="Find the example by its external_id.")
@click.option("--labels", default=None, help="Theos JSON labels (a list of boxes).")
@click.option("--labels-file", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="File with Theos JSON labels ('-' for stdin).")
def _examples_labels(theos: TheosClient, as_json: bool, dataset_id: str, example_id: str | None,
                     external_id: str | None, labels: str | None, labels_file: str | None) -> None:
    """Set (replace) the labels of one example of dataset DATASET_ID.

    \b
    Example:
      manifester examples labels 42 --external-id cats/001.jpg \\
        --labels '[{"class_id": 0, "x": 10, "y": 20, "width": 50, "height": 40}]'
      manifester examples labels 42 1234 --labels-file boxes.json
    """
    target = _example_target(example_id, external_id)
    boxes = _read_labels(labels, labels_file)
    example = theos.set_labels(dataset_id, boxes, **target)
    if as_json:
        _print_json(example)
    else:
        click.echo(f"set {len(boxes)} label(s) on example {example.id}")


@_api_command(examples, "skip")
@click.argument("dataset_id")
@click.argument("example_id", required=False)
@click.option("--external-id", default=None, help="Find the example by its external_id.")
def _examples_skip(theos: TheosClient, as_json: bool, dataset_id: str, example_id: str | None,
                   external_id: str | None) -> None:
    """Mark one example of dataset DATASET_ID as labeled with nothing to label.

    \b
    Example:
      manifester examples skip 42 --external-id cats/empty-street.jpg
    """
    example = theos.skip_example(dataset_id, **_example_target(example_id, external_id))
    if as_json:
        _print_json(example)
    else:
        click.echo(f"skipped example {example.id}")


# --------------------------------------------------------------------------- tasks

tasks = _api_group(
    "tasks",
    """Follow server tasks (uploads, class deletions and merges).

    \b
    Example:
      manifester tasks wait 5f1c0d7e
    """,
)


@_api_command(tasks, "get")
@click.argument("task_id")
def _tasks_get(theos: TheosClient, as_json: bool, task_id: str) -> None:
    """Show the state and progress of task TASK_ID.

    \b
    Example:
      manifester tasks get 5f1c0d7e --json
    """
    _print_task(theos.get_task(task_id), as_json)


@_api_command(tasks, "wait")
@click.argument("task_id")
@_wait_options
def _tasks_wait(theos: TheosClient, as_json: bool, task_id: str, timeout: float | None, poll_interval: float) -> None:
    """Wait for task TASK_ID to end, with a progress bar; exit 1 unless it succeeded.

    \b
    Example:
      manifester tasks wait 5f1c0d7e --timeout 3600
    """
    task = _follow(theos, task_id, timeout=timeout, poll_interval=poll_interval, desc="task")
    _print_task(task, as_json)
    _check_task(task)


# --------------------------------------------------------------------------- upload

upload = _api_group(
    "upload",
    """Start or stop the upload of one manifest (for many, use `manifester migrate`).

    \b
    Example:
      manifester upload start 42 --manifest-url https://bucket.example/m-0001.json --wait
      manifester upload stop 42
    """,
)


@_api_command(upload, "start")
@click.argument("dataset_id")
@click.option("--manifest-url", required=True, help="URL of the manifest JSON the server can download.")
@click.option("--wait/--no-wait", default=False, show_default=True, help="Follow the upload task to its end.")
@_wait_options
def _upload_start(theos: TheosClient, as_json: bool, dataset_id: str, manifest_url: str, wait: bool,
                  timeout: float | None, poll_interval: float) -> None:
    """Upload the images listed at --manifest-url into dataset DATASET_ID; prints the task id.

    \b
    Example:
      manifester upload start 42 --manifest-url https://bucket.example/m-0001.json --wait
    """
    task_id = theos.upload(dataset_id, manifest_url)
    _run_task(theos, as_json, task_id, wait, timeout, poll_interval, "uploading")


@_api_command(upload, "stop")
@click.argument("dataset_id")
def _upload_stop(theos: TheosClient, as_json: bool, dataset_id: str) -> None:
    """Stop the upload running on dataset DATASET_ID.

    \b
    Example:
      manifester upload stop 42
    """
    theos.stop_upload(dataset_id)
    if as_json:
        _print_json({"stopped": dataset_id})
    else:
        click.echo(f"stopped the upload of dataset {dataset_id}")


commands: list[click.Command] = [datasets, classes, examples, tasks, upload]
