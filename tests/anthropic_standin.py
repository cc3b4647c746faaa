"""A small HTTP stand-in for the Claude Messages API, streaming server-sent events.

Not a test module; test modules import it. :class:`MessagesStandin` listens on 127.0.0.1
and a free port (stdlib ``http.server`` in a background thread) and answers
``POST /v1/messages`` with ``stream: true`` the way the API does: ``message_start`` (with
the input token count), a text content block streamed as ``content_block_delta`` events,
``message_delta`` (with the output token count) and ``message_stop``; or, as told, an HTTP
error, or an ``error`` event in the middle of the stream. It keeps every request's
headers and body for the test to check.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

__all__ = ["MessagesStandin", "messages_api"]


@dataclass(frozen=True, slots=True)
class _Reply:
    pieces: tuple[str, ...] = ("Hi",)
    input_tokens: int = 10
    output_tokens: int = 5
    status: int = 200  # another status: an error body instead of a stream
    error_after: int | None = None  # pieces before an ``error`` event


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: MessagesStandin

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up leaves a broken pipe behind: expected


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        reply = self.server.standin._received(dict(self.headers), body)
        if self.path != "/v1/messages" or reply.status != 200:
            status = 404 if self.path != "/v1/messages" else reply.status
            error = {"type": "error", "error": {"type": "api_error", "message": "stand-in"}}
            payload = json.dumps(error).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # no length: the stream ends when the connection closes
        model = body.get("model")
        self._event("message_start", {"message": {
            "id": "msg_standin", "type": "message", "role": "assistant", "model": model,
            "content": [], "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1},
        }})  # fmt: skip
        self._event("content_block_start", {"index": 0, "content_block": {"type": "text"}})
        self._event("ping", {})
        for number, piece in enumerate(reply.pieces):
            if reply.error_after is not None and number >= reply.error_after:
                error = {"type": "overloaded_error", "message": "Overloaded"}
                self._event("error", {"error": error})
                return
            delta = {"type": "text_delta", "text": piece}
            self._event("content_block_delta", {"index": 0, "delta": delta})
        self._event("content_block_stop", {"index": 0})
        self._event("message_delta", {
            "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": reply.output_tokens},
        })  # fmt: skip
        self._event("message_stop", {})

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        text = f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"
        self.wfile.write(text.encode())
        self.wfile.flush()


class MessagesStandin:
    """A fake Messages API on 127.0.0.1 and a free port; use as a context manager."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reply = _Reply()
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MessagesStandin:
        """Listen and serve in a background thread."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.standin = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (what ``ANTHROPIC_BASE_URL`` is set to)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def reply(
        self,
        pieces: Iterable[str],
        input_tokens: int = 10,
        output_tokens: int = 5,
        status: int = 200,
        error_after: int | None = None,
    ) -> None:
        """How the next requests are answered."""
        with self._lock:
            self._reply = _Reply(tuple(pieces), input_tokens, output_tokens, status, error_after)

    def _received(self, headers: dict[str, str], body: dict[str, Any]) -> _Reply:
        with self._lock:
            self.requests.append(({k.lower(): v for k, v in headers.items()}, body))
            return self._reply


@pytest.fixture
def messages_api() -> Iterator[MessagesStandin]:
    """A started stand-in, stopped at the end of the test."""
    standin = MessagesStandin().start()
    yield standin
    standin.stop()
