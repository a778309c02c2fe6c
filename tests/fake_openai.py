"""A fake OpenAI-compatible chat-completions endpoint on 127.0.0.1 for the query-assist tests:
it records every request and answers what the test told it to (an answer, an HTTP error,
raw bytes, or nothing until the test ends)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeOpenAI:
    url: str = ""
    content: str = "SELECT 1"
    status: int = 200
    raw: bytes | None = None  # sent as the body instead of a chat completion
    hang: bool = False  # hold the request until the test ends
    requests: list[dict[str, Any]] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)

    def answer(self, content: str) -> None:
        self.content, self.status, self.raw, self.hang = content, 200, None, False

    def completion(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content},
                         "finish_reason": "stop"}],
        }).encode()

    def last_prompt(self) -> str:
        """Everything the server sent in its last request's messages."""
        return "\n".join(m["content"] for m in self.requests[-1]["body"]["messages"])


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            fake.requests.append({
                "path": self.path, "headers": dict(self.headers), "body": json.loads(self.rfile.read(length)),
            })
            if fake.hang:
                fake.released.wait(30)
                return
            body = fake.completion()
            self.send_response(fake.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def running_fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.released.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
