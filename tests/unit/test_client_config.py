"""Where the client finds its server and key: flags, profile, environment, default profile, default."""

from __future__ import annotations

from pathlib import Path

import pytest

from duckmesh.client.config import DEFAULT_SERVER, config_path, resolve, save_profile
from duckmesh.errors import ClientConfigError


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path), **extra}


def test_the_config_file_lives_under_xdg_config_home_unless_duckmesh_config_names_one(tmp_path: Path) -> None:
    assert config_path(env_for(tmp_path)) == tmp_path / "duckmesh" / "config.toml"
    assert config_path({"DUCKMESH_CONFIG": str(tmp_path / "x.toml")}) == tmp_path / "x.toml"
    assert config_path({}) == Path.home() / ".config" / "duckmesh" / "config.toml"


def test_with_nothing_configured_the_client_talks_to_the_local_default_without_a_key(tmp_path: Path) -> None:
    connection = resolve(env=env_for(tmp_path))
    assert (connection.server, connection.key) == (DEFAULT_SERVER, None)


def test_precedence_is_flags_then_named_profile_then_environment_then_default_profile(tmp_path: Path) -> None:
    path = config_path(env_for(tmp_path))
    save_profile("prod", "https://prod.example", "dm_prod", make_default=True, path=path)
    save_profile("stage", "https://stage.example", "dm_stage", make_default=False, path=path)
    environment = env_for(tmp_path, DUCKMESH_SERVER="http://env:1", DUCKMESH_API_KEY="dm_env")
    assert resolve(env=env_for(tmp_path)).server == "https://prod.example"  # the default profile
    assert resolve(env=environment).key == "dm_env"  # the environment beats the default profile
    assert resolve(profile="stage", env=environment).server == "https://stage.example"  # a named one beats it
    flagged = resolve("http://flag:2/", "dm_flag", profile="stage", env=environment)
    assert (flagged.server, flagged.key) == ("http://flag:2", "dm_flag")


def test_an_unknown_profile_or_a_non_http_server_is_a_clear_error(tmp_path: Path) -> None:
    save_profile("one", "http://a:1", None, make_default=True, path=config_path(env_for(tmp_path)))
    with pytest.raises(ClientConfigError, match=r"no profile 'two'.*profiles: one"):
        resolve(profile="two", env=env_for(tmp_path))
    with pytest.raises(ClientConfigError, match="http"):
        resolve("ftp://x", env=env_for(tmp_path))
