"""Local-directory object store (``file://``): atomic writes by temp file + fsync + rename."""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from duckmesh.errors import ObjectNotFound, StorageError, TransientStorageError
from duckmesh.storage.base import ObjectInfo, check_key, check_prefix, make_private_dirs, write_private

_TEMP_SUFFIX = ".dm-tmp"
_CLASHES = (FileExistsError, NotADirectoryError, IsADirectoryError)


class LocalObjectStore:
    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise StorageError("local object store needs a file:// URL")
        self.url = url
        self.root = Path(unquote(parsed.path)).resolve()
        make_private_dirs(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        target = self._path(key)
        temp = target.with_name(f".{target.name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}")
        try:
            make_private_dirs(target.parent)
            write_private(temp, data, sync=True)  # owner-only: 0600 files in 0700 folders
            os.replace(temp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            # A key running through an existing object (or onto a folder) can never be written here.
            error = StorageError if isinstance(exc, _CLASHES) else TransientStorageError
            raise error("local write failed", key=key, reason=exc.strerror) from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            # A folder, or a path through an object, is no object: the same answer S3 gives.
            raise ObjectNotFound("object does not exist", key=key) from None
        except OSError as exc:
            raise TransientStorageError("local read failed", key=key, reason=exc.strerror) from exc

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            found = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise TransientStorageError("local stat failed", key=key, reason=exc.strerror) from exc
        if not stat.S_ISREG(found.st_mode):
            return None
        return ObjectInfo(key, found.st_size, datetime.fromtimestamp(found.st_mtime, UTC))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            return  # a folder-like prefix is not an object; S3 ignores such a delete too
        try:
            path.unlink(missing_ok=True)
        except NotADirectoryError:
            return
        except OSError as exc:
            raise TransientStorageError("local delete failed", key=key, reason=exc.strerror) from exc

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        # Walk from the last whole folder of the prefix: "1/10" must also find "1/100/...".
        folder = prefix.rpartition("/")[0]
        start = self.root / folder if folder else self.root
        if not start.is_dir():
            return iter(())
        try:
            return iter(sorted(self._walk(start, prefix), key=lambda info: info.key))
        except OSError as exc:
            raise TransientStorageError("local list failed", prefix=prefix, reason=exc.strerror) from exc

    def _walk(self, start: Path, prefix: str) -> Iterator[ObjectInfo]:
        for dirpath, dirs, files in os.walk(start):
            here = Path(dirpath).relative_to(self.root).as_posix()
            base = "" if here == "." else f"{here}/"
            dirs[:] = [d for d in dirs if _may_hold(f"{base}{d}/", prefix)]
            for name in files:
                key = f"{base}{name}"
                if name.endswith(_TEMP_SUFFIX) or not key.startswith(prefix):
                    continue
                try:
                    found = (Path(dirpath) / name).stat()
                except FileNotFoundError:
                    continue  # deleted while listing
                yield ObjectInfo(key, found.st_size, datetime.fromtimestamp(found.st_mtime, UTC))

    def local_path(self, key: str) -> str | None:
        return str(self._path(key))

    def check_writable(self) -> None:
        key = f"_health/{uuid.uuid4().hex}"
        self.put(key, b"ok")
        self.delete(key)


def _may_hold(folder: str, prefix: str) -> bool:
    """Whether keys under ``folder`` (ending with '/') can start with ``prefix``."""
    return folder.startswith(prefix) or prefix.startswith(folder)
