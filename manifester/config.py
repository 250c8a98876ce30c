"""Settings and their precedence; the only module that reads the environment.

Precedence, the same everywhere: command-line flag > environment variable
(``THEOS_*`` for the API, ``MANIFESTER_*`` for the tool) > config file > default.

The config file is TOML. The ``[theos]`` table holds ``api_url``, ``project_key`` and
``api_token`` (a file is the place for a token; never a flag). Every other table is
named after a CLI command (``[migrate]``, ``[ingest]``, ``[build]``) and holds that
command's options by their long name with ``_`` for ``-``::

    [theos]
    project_key = "ab12cd"
    api_token = "..."

    [ingest]
    source = "s3://photos/incoming"
    dataset_id = "42"
    split = "train=80,valid=10,test=10"
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "DEFAULT_API_URL",
    "TheosSettings",
    "default_state_path",
    "env",
    "load_config_file",
    "theos_settings",
]

DEFAULT_API_URL = "https://api.theos.ai"


def env(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """One environment variable, or None when unset or empty."""
    value = (os.environ if environ is None else environ).get(name)
    return value if value else None


@dataclass(frozen=True)
class TheosSettings:
    """Where the Theos API is and how to authenticate. ``repr`` hides the token."""

    api_url: str
    project_key: str | None
    api_token: str | None

    def __repr__(self) -> str:
        token = "set" if self.api_token else "unset"
        return f"TheosSettings(api_url={self.api_url!r}, project_key={self.project_key!r}, api_token=<{token}>)"


def load_config_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Parse a TOML config file; ``None`` falls back to ``MANIFESTER_CONFIG``, then to nothing."""
    if path is None:
        path = env("MANIFESTER_CONFIG")
        if path is None:
            return {}
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist", hint="check the --config path") from None
    except PermissionError:
        raise ConfigError(f"config file {p} is not readable", hint="check its permissions") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}", hint="fix the file and run again") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory", hint="pass the path of a .toml file") from None
    for table, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(
                f"config file {p}: top-level key {table!r} must be a table such as [theos] or [ingest]",
                hint="put options under a [command] table",
            )
    return data


def theos_settings(
    *,
    api_url: str | None = None,
    project_key: str | None = None,
    api_token: str | None = None,
    config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> TheosSettings:
    """Resolve the API settings: explicit argument > THEOS_* environment > [theos] table > default."""
    table = dict((config or {}).get("theos", {}))

    def pick(explicit: str | None, var: str, key: str) -> str | None:
        if explicit:
            return explicit
        from_env = env(var, environ)
        if from_env:
            return from_env
        value = table.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"config [theos] {key} must be a string", hint=f'write {key} = "..."')
        return value or None

    url = pick(api_url, "THEOS_API_URL", "api_url") or DEFAULT_API_URL
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"Theos API URL {url!r} is not an http(s) URL", hint="set THEOS_API_URL=https://api.theos.ai")
    return TheosSettings(
        api_url=url.rstrip("/"),
        project_key=pick(project_key, "THEOS_PROJECT_KEY", "project_key"),
        api_token=pick(api_token, "THEOS_API_TOKEN", "api_token"),
    )


def default_state_path(environ: Mapping[str, str] | None = None) -> Path:
    """The default ledger: ``$MANIFESTER_STATE``, else ``$XDG_STATE_HOME/manifester/ledger.sqlite``."""
    explicit = env("MANIFESTER_STATE", environ)
    if explicit:
        return Path(explicit)
    base = env("XDG_STATE_HOME", environ)
    root = Path(base) if base else Path.home() / ".local" / "state"
    return root / "manifester" / "ledger.sqlite"
