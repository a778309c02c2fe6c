"""Operating-system limits a query worker process puts on itself before it runs any query.

- An address-space limit (``RLIMIT_AS``): DuckDB's own memory limit does not cover everything a
  query allocates (a 500-million-element list, a 2 GB string); past this limit allocations fail,
  DuckDB answers "out of memory" and the host is never exhausted.
- No file writes outside the spill folder (Linux Landlock, where the kernel offers it): DuckDB can
  read the tenant's data folder but cannot write there (``COPY ... TO``, ``ATTACH``, ``EXPORT``),
  whatever SQL got past both checkers. Reads stay governed by DuckDB's own allowed directories.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from collections.abc import Iterable

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # the same on every Linux architecture
_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_WRITE_FILE, _REMOVE_DIR, _REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
_MAKE = sum(1 << bit for bit in range(6, 13))  # char, dir, reg, sock, fifo, block, sym
_REFER, _TRUNCATE = 1 << 13, 1 << 14


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def limit_address_space(max_bytes: int) -> None:
    """Cap this process's virtual memory; allocations beyond it fail."""
    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is not available."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(ctypes.c_long(_CREATE_RULESET), None, ctypes.c_size_t(0), ctypes.c_uint32(_RULESET_VERSION))
    return max(int(version), 0)


def forbid_writes_outside(writable: Iterable[str]) -> bool:
    """Forbid this process (and its children) to create, change or remove any file except under
    ``writable``. Returns False, changing nothing, when the kernel has no Landlock."""
    abi = landlock_abi()
    if abi < 1:
        return False
    handled = _WRITE_FILE | _REMOVE_DIR | _REMOVE_FILE | _MAKE
    handled |= _REFER if abi >= 2 else 0
    handled |= _TRUNCATE if abi >= 3 else 0
    libc = ctypes.CDLL(None, use_errno=True)
    attr = _RulesetAttr(handled)
    ruleset = libc.syscall(ctypes.c_long(_CREATE_RULESET), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        return False
    try:
        for path in writable:
            folder = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(handled, folder)
                if libc.syscall(ctypes.c_long(_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH),
                                ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
                    return False
            finally:
                os.close(folder)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            return False
        return bool(libc.syscall(ctypes.c_long(_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)) == 0)
    finally:
        os.close(ruleset)
