"""Where a client finds its server and key.

Precedence, per value: ``--server`` / ``--key`` flags; then an explicitly named ``--profile``;
then ``DUCKMESH_SERVER`` / ``DUCKMESH_API_KEY``; then the config file's default profile; then
the server ``http://127.0.0.1:8080`` (what ``duckmesh up`` serves) with no key.

The config file is ``$DUCKMESH_CONFIG``, else ``$XDG_CONFIG_HOME/duckmesh/config.toml``, else
``~/.config/duckmesh/config.toml``::

    default_profile = "local"

    [profiles.local]
    server = "http://127.0.0.1:8080"
    key = "dm_..."
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from duckmesh.errors import ClientConfigError

DEFAULT_SERVER = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Connection:
    server: str
    key: str | None
    profile: str | None = None


def config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("DUCKMESH_CONFIG"):
        return Path(env["DUCKMESH_CONFIG"]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "duckmesh" / "config.toml"


def load_config(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, OSError) as exc:
        raise ClientConfigError(f"cannot read the client config {path}: {exc}") from None


def _profile(config: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    profiles = config.get("profiles", {})
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ClientConfigError(f"no profile {name!r} in {path} (profiles: {known})")
    found = profiles[name]
    if not isinstance(found, dict):
        raise ClientConfigError(f"profile {name!r} in {path} must be a table")
    return found


def resolve(
    server: str | None = None, key: str | None = None, profile: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Connection:
    env = os.environ if env is None else env
    path = config_path(env)
    config = load_config(path)
    named: dict[str, Any] = {}
    fallback: dict[str, Any] = {}
    if profile is not None:
        named = _profile(config, profile, path)
    elif config.get("default_profile"):
        profile = str(config["default_profile"])
        fallback = _profile(config, profile, path)
    chosen_server = server or named.get("server") or env.get("DUCKMESH_SERVER") or fallback.get("server")
    chosen_key = key or named.get("key") or env.get("DUCKMESH_API_KEY") or fallback.get("key")
    url = str(chosen_server or DEFAULT_SERVER).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ClientConfigError(f"the server must be an http:// or https:// URL, got {url!r}")
    return Connection(url, str(chosen_key) if chosen_key else None, profile)


def save_profile(name: str, server: str, key: str | None, *, make_default: bool, path: Path) -> None:
    """Add or replace one profile in the config file (created with mode 600: it holds keys)."""
    config = load_config(path)
    profiles: dict[str, Any] = dict(config.get("profiles", {}))
    profiles[name] = {"server": server, **({"key": key} if key else {})}
    default = name if make_default or not config.get("default_profile") else str(config["default_profile"])
    lines = [f"default_profile = {json.dumps(default)}"]
    for profile_name, values in sorted(profiles.items()):
        lines += ["", f"[profiles.{json.dumps(profile_name)}]"]
        lines += [f"{field} = {json.dumps(str(value))}" for field, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
