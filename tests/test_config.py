"""Settings precedence: explicit > THEOS_* environment > [theos] table > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifester.config import (
    DEFAULT_API_URL,
    default_state_path,
    load_config_file,
    theos_settings,
)
from manifester.errors import ConfigError


def test_default_api_url_when_nothing_is_set() -> None:
    s = theos_settings(environ={})
    assert s.api_url == DEFAULT_API_URL
    assert s.project_key is None and s.api_token is None


def test_precedence_explicit_over_env_over_file() -> None:
    config = {"theos": {"api_url": "http://file:1", "project_key": "file-key", "api_token": "file-token"}}
    env = {"THEOS_PROJECT_KEY": "env-key", "THEOS_API_URL": "http://env:2"}
    s = theos_settings(project_key="flag-key", config=config, environ=env)
    assert s.project_key == "flag-key"
    assert s.api_url == "http://env:2"
    assert s.api_token == "file-token"


def test_token_never_in_repr() -> None:
    s = theos_settings(api_token="s3cr3t-token", environ={})
    assert "s3cr3t-token" not in repr(s)


def test_bad_api_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        theos_settings(environ={"THEOS_API_URL": "ftp://x"})


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml does not exist"):
        load_config_file(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("[theos\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(bad)
    flat = tmp_path / "flat.toml"
    flat.write_text('source = "s3://x"\n')
    with pytest.raises(ConfigError, match="must be a table"):
        load_config_file(flat)


def test_config_file_loads_tables(tmp_path: Path) -> None:
    good = tmp_path / "m.toml"
    good.write_text('[theos]\nproject_key = "k"\n[ingest]\ndataset_id = "42"\n')
    assert load_config_file(good) == {"theos": {"project_key": "k"}, "ingest": {"dataset_id": "42"}}


def test_state_path_precedence(tmp_path: Path) -> None:
    assert default_state_path({"MANIFESTER_STATE": str(tmp_path / "l.sqlite")}) == tmp_path / "l.sqlite"
    assert default_state_path({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "manifester" / "ledger.sqlite"
