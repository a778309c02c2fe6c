import socket

from duckmesh.cli.serve import _bind


def test_the_listening_socket_is_tcp_so_responses_are_not_held_back_by_nagle() -> None:
    # asyncio sets TCP_NODELAY on accepted connections only when the listener's proto is TCP;
    # with proto 0 every small response waited ~40 ms for the client's delayed ACK.
    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
