import socket

from duckmesh.cli.serve import _bind
from duckmesh.config import Settings
from tests.conftest import free_port


def test_the_listening_socket_is_tcp_so_responses_are_not_held_back_by_nagle() -> None:
    # asyncio sets TCP_NODELAY on accepted connections only when the listener's proto is TCP;
    # with proto 0 every small response waited ~40 ms for the client's delayed ACK.
    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_a_go_style_address_binds_every_interface() -> None:
    settings = Settings(http_addr=f":{free_port()}")
    sock = _bind(settings.http_host, settings.http_port)
    try:
        assert sock.getsockname() == ("0.0.0.0", settings.http_port)
    finally:
        sock.close()
