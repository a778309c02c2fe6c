"""Benchmark experiment only (bench/experiments.py), never used by DuckMesh itself.

Makes asyncio set TCP_NODELAY on every TCP connection, which is what it would do by itself if
``duckmesh.cli._bind`` created its listening socket with ``proto=IPPROTO_TCP``: asyncio's
``_set_nodelay`` skips sockets whose ``proto`` is 0, and accepted sockets inherit the
listener's. Loaded through PYTHONPATH into the api process of the experiment, so the
proposed one-line fix can be measured before anyone changes src/.
"""

import asyncio.base_events
import asyncio.selector_events
import socket


def _set_nodelay(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


asyncio.base_events._set_nodelay = _set_nodelay  # type: ignore[attr-defined]
asyncio.selector_events._set_nodelay = _set_nodelay  # type: ignore[attr-defined]
