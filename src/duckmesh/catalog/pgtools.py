"""PostgreSQL's own dump tools, when there is one this catalog can use.

``pg_dump`` must be at least as new as the server it dumps, ``pg_restore`` at least as new as the
``pg_dump`` that wrote an archive. Candidates: the one on ``PATH`` and the one bundled with the
embedded server (pgserver, a dependency of DuckMesh, so a machine with only Python has one as long
as pgserver ships binaries for its platform). The newest suitable one wins; None when neither fits
(callers then fall back to the logical export, or fail with one line naming what is missing).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

from duckmesh.errors import BackupFailed

log = logging.getLogger(__name__)

_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class PgTool:
    name: str
    path: Path
    major: int
    version: str

    def describe(self) -> str:
        return f"{self.name} {self.version} ({self.path})"


def _bundled_dir() -> Path | None:
    try:
        from pgserver._commands import POSTGRES_BIN_PATH  # the embedded server's binaries
    except Exception:  # pgserver missing or without binaries for this platform
        return None
    return Path(POSTGRES_BIN_PATH)


def _probe(name: str, path: Path) -> PgTool | None:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    if match is None:
        return None
    version = match.group(1) + (f".{match.group(2)}" if match.group(2) else "")
    return PgTool(name, path, int(match.group(1)), version)


def candidates(name: str, search: list[Path] | None = None) -> list[PgTool]:
    """Every runnable ``name`` found: on PATH first, then the bundled one (or in ``search`` only)."""
    if search is None:
        found = shutil.which(name)
        bundled = _bundled_dir()
        paths = [Path(found)] if found else []
        if bundled is not None and (bundled / name).exists():
            paths.append(bundled / name)
    else:
        paths = [d / name for d in search if (d / name).exists()]
    tools = [tool for path in paths if (tool := _probe(name, path)) is not None]
    return tools


def find(name: str, min_major: int, search: list[Path] | None = None) -> PgTool | None:
    """The newest ``name`` whose major version is at least ``min_major``."""
    suitable = [t for t in candidates(name, search) if t.major >= min_major]
    return max(suitable, key=lambda t: t.major, default=None)


def _connection_args(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password (which goes through PGPASSWORD, never the command line)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    env = dict(os.environ)
    password = info.pop("password", None)
    if password:
        env["PGPASSWORD"] = str(password)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()}), env


def _run(tool: PgTool, args: list[str], dsn: str, timeout: float) -> None:
    conninfo, env = _connection_args(dsn)
    command = [str(tool.path), *args, f"--dbname={conninfo}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BackupFailed(f"{tool.name} did not finish within {timeout:.0f} s") from None
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-5:]
        raise BackupFailed(f"{tool.name} failed (exit {result.returncode}): {' / '.join(tail)}", tool=tool.describe())


def dump(tool: PgTool, dsn: str, snapshot: str, target: Path, timeout: float = 3600) -> None:
    """A custom-format archive of the whole catalog database as of the exported ``snapshot``."""
    _run(tool, ["--format=custom", "--no-owner", "--no-acl", f"--snapshot={snapshot}", f"--file={target}"],
         dsn, timeout)


def restore(tool: PgTool, archive: Path, dsn: str, timeout: float = 3600) -> None:
    """Restore an archive into an empty database; any error aborts (and is raised)."""
    _run(tool, ["--no-owner", "--no-acl", "--exit-on-error", "--single-transaction", str(archive)], dsn, timeout)
