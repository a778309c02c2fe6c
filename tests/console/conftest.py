"""The console's browser tests use the client tests' live server (real uvicorn on 127.0.0.1)."""

from tests.client.conftest import live_server

__all__ = ["live_server"]
