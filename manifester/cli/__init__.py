"""The ``manifester`` command line: commands only.

Each command parses its flags, calls one library function and prints the result.
Errors from the library (:class:`manifester.errors.ManifesterError`) are printed as
one clear message plus a hint, with a non-zero exit code and no traceback.

Commands live in one module per area (``build``, ``server``, ``api``, ``run``);
each module exposes ``commands``, a list of click commands or groups.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from ..config import env, load_config_file
from ..errors import ConfigError, ManifesterError
from . import api, build, run, server

__all__ = ["cli", "main", "usage_error_text"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="manifester")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML config file ([theos] settings, and one table of defaults per command). Env: MANIFESTER_CONFIG.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Move image collections from S3, GCS or local folders into Theos datasets.

    \b
    Example:
      manifester build s3://photos/cats --out manifests/
      manifester migrate s3://photos/cats --dataset Cats
    """
    # Precedence is flag > environment > config file > default: click applies flags and
    # envvars itself, and default_map supplies the config file's values below them.
    config = load_config_file(config_path)
    _check_config(config, config_path or env("MANIFESTER_CONFIG") or "")
    ctx.obj = {"config": config}
    ctx.default_map = {name: table for name, table in config.items() if name != "theos"}


#: Keys of the [theos] table (see manifester.config.theos_settings).
_THEOS_KEYS = ("api_url", "project_key", "api_token")


def _check_config(config: dict[str, Any], path: str) -> None:
    """Refuse unknown tables and keys: click's default_map would silently ignore a typo such as ``max_entrys``."""
    where = f"config file {path}" if path else "config file"
    for name, table in config.items():
        if name == "theos":
            for key in table:
                if key not in _THEOS_KEYS:
                    raise ConfigError(f"{where}: unknown key {key!r} in [theos]", hint=f"known keys: {', '.join(_THEOS_KEYS)}")
            continue
        command = cli.commands.get(name)
        if command is None:
            tables = ", ".join(f"[{n}]" for n in ("theos", *sorted(cli.commands)))
            raise ConfigError(f"{where}: unknown table [{name}]", hint=f"tables are named after commands: {tables}")
        _check_table(where, name, command, table)


def _check_table(where: str, label: str, command: click.Command, table: dict[str, Any]) -> None:
    options = sorted(p.name for p in command.params if p.name)
    subcommands = command.commands if isinstance(command, click.Group) else {}
    for key, value in table.items():
        if key in subcommands and isinstance(value, dict):  # [datasets.list] and the like
            _check_table(where, f"{label}.{key}", subcommands[key], value)
        elif key not in options:
            raise ConfigError(
                f"{where}: unknown key {key!r} in [{label}]",
                hint=f"known keys: {', '.join(options)}",
            )


for _module in (build, server, api, run):
    for _command in _module.commands:
        cli.add_command(_command)


def _configure_logging() -> None:
    """Library warnings (retries, skipped objects) go to stderr as one readable line each.

    The library only logs to ``logging.getLogger("manifester...")`` and never configures
    handlers itself (that is the application's choice); the CLI is the application here.
    ``MANIFESTER_LOG=debug`` shows more.
    """
    level_name = (env("MANIFESTER_LOG") or "warning").upper()
    level = getattr(logging, level_name, logging.WARNING)
    logger = logging.getLogger("manifester")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # The SDKs' own warnings (e.g. botocore failing to refresh credentials) would otherwise
    # reach Python's last-resort handler with a traceback and, possibly, a signed URL in it.
    third_party = _StderrHandler()
    third_party.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
    third_party.addFilter(_OneLineRedacted())
    for name in ("botocore", "boto3", "google", "urllib3", "httpx"):
        sdk_logger = logging.getLogger(name)
        # botocore and boto3 add a NullHandler when imported; only a real handler (ours
        # from an earlier call, or the embedding application's) means "already configured"
        if all(isinstance(h, logging.NullHandler) for h in sdk_logger.handlers):
            sdk_logger.addHandler(third_party)
            sdk_logger.setLevel(max(level, logging.WARNING))
            sdk_logger.propagate = False


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (it may be replaced after setup, e.g. by tests)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _OneLineRedacted(logging.Filter):
    """Drop tracebacks and URL query strings (presigned signatures) from a log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ..theos import redact_urls

        record.msg = redact_urls(record.getMessage())
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    # click says "Missing option '--out'."; library errors start in lower case
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        text = text[0].lower() + text[1:]
    return text


def usage_error_text(exc: click.UsageError) -> str:
    """A click usage error (bad value, missing or unknown option) in the library errors' shape.

    One ``error:`` line naming the option, then a hint line, instead of click's usage block:

    >>> print(usage_error_text(click.UsageError("Missing option '--out'.")))
    error: missing option '--out'.
      hint: see 'manifester --help'
    """
    command = exc.ctx.command_path if exc.ctx is not None else "manifester"
    return f"error: {_one_line(exc.format_message())}\n  hint: see '{command} --help'"


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: run the CLI, turning library errors into clean exits."""
    _configure_logging()
    try:
        return cli.main(args=argv, prog_name="manifester", standalone_mode=False)
    except ManifesterError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # a bare group (`manifester datasets`): its help is the useful answer
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        click.echo(usage_error_text(exc), err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
