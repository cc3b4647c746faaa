"""A small HTTP stand-in for an Ollama server, for the hub's endpoint health checks.

Not a test module; test modules import it. :class:`OllamaStandin` listens on 127.0.0.1
and a free port (stdlib ``http.server`` in a background thread) and answers
``GET /api/tags`` and ``GET /api/ps`` the way Ollama does, or deliberately badly:

- :meth:`OllamaStandin.serve`: healthy, with a model list and a list of loaded (warm) models;
- :meth:`OllamaStandin.fail`: HTTP 500 (or another status);
- :meth:`OllamaStandin.garbage`: 200 with a body that is not JSON;
- :meth:`OllamaStandin.slow`: answers only after ``delay_s`` (longer than the hub's check
  timeout). The wait ends early when the stand-in stops, so it never outlives a test.

``POST /api/chat`` streams a chat answer the way Ollama does (one JSON object per line,
the last with ``done`` and the token counts), as set by :meth:`OllamaStandin.chat`; with
``die_after`` it closes the connection after that many pieces, as an Ollama that crashes
mid-answer does; with ``hold`` it sends the pieces and then waits for the client to hang
up (``chat_abandoned`` is set when it does). The request bodies it received are kept in
``chat_requests``.

The :func:`make_ollama` and :func:`ollama` fixtures start stand-ins and stop them at the
end of the test (import them into a test module to use them).

It counts the requests it receives per path, and :meth:`OllamaStandin.wait_for_requests`
waits (with a timeout, no polling) until a number of them has arrived. The behaviour in
force when a request arrives is the one it gets, so switching behaviour never changes the
answer to a request already received.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import pytest

__all__ = ["OllamaMaker", "OllamaStandin", "make_ollama", "ollama"]

_PATHS = ("/api/tags", "/api/ps")


@dataclass(frozen=True, slots=True)
class _Chat:
    pieces: tuple[str, ...] = ("Hello", " world")
    prompt_eval_count: int = 26
    eval_count: int = 298
    die_after: int | None = None
    hold: bool = False


@dataclass(frozen=True, slots=True)
class _Behaviour:
    mode: str  # "healthy", "status", "garbage" or "slow"
    models: tuple[str, ...] = ()
    loaded: tuple[str, ...] = ()
    status: int = 200
    delay_s: float = 0.0


def _models_body(names: Iterable[str]) -> bytes:
    models = [{"name": name, "model": name, "size": 4_683_087_332} for name in names]
    return json.dumps({"models": models}).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    standin: OllamaStandin

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (the hub's timeout) leaves a broken pipe behind: expected.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        standin = self.server.standin
        behaviour = standin._arrived(self.path)
        if behaviour.mode == "slow" and standin._stopping.wait(behaviour.delay_s):
            return  # stopping: drop the connection
        if self.path not in _PATHS:
            self._send(404, b'{"error":"not found"}')
        elif behaviour.mode == "status":
            self._send(behaviour.status, b'{"error":"internal error"}')
        elif behaviour.mode == "garbage":
            self._send(200, b"<html>this is not json{")
        elif self.path == "/api/tags":
            self._send(200, _models_body(behaviour.models))
        else:
            self._send(200, _models_body(behaviour.loaded))

    def do_POST(self) -> None:
        standin = self.server.standin
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        chat = standin._chatted(self.path, request)
        if self.path != "/api/chat":
            self._send(404, b'{"error":"not found"}')
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()  # no length: the body ends when the connection closes
        model = request.get("model")
        for number, piece in enumerate(chat.pieces):
            if chat.die_after is not None and number >= chat.die_after:
                return  # the connection closes without the final line
            line = {"model": model, "message": {"role": "assistant", "content": piece}}
            self.wfile.write(json.dumps({**line, "done": False}).encode() + b"\n")
            self.wfile.flush()
        if chat.hold:
            self.rfile.read(1)  # returns once the client has closed the connection
            standin.chat_abandoned.set()
            return
        final = {
            "model": model, "message": {"role": "assistant", "content": ""}, "done": True,
            "prompt_eval_count": chat.prompt_eval_count, "eval_count": chat.eval_count,
        }  # fmt: skip
        self.wfile.write(json.dumps(final).encode() + b"\n")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class OllamaStandin:
    """A fake Ollama on a loopback address (127.0.0.1 unless ``host`` says otherwise) and a
    free port; healthy with no model until told otherwise.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._lock = threading.Condition()
        self._behaviour = _Behaviour("healthy")
        self._requests: Counter[str] = Counter()
        self._chat = _Chat()
        self.chat_requests: list[dict[str, Any]] = []
        self.chat_abandoned = threading.Event()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> OllamaStandin:
        """Listen and serve in a background thread."""
        server = _Server((self.host, 0), _Handler)
        server.standin = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; slow requests in progress are cut short."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> OllamaStandin:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- addresses ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port."""
        assert self._server is not None
        port: int = self._server.server_address[1]
        return port

    @property
    def host_port(self) -> str:
        """``<host>:<port>``, as the hub names it in ``selected_endpoint``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://<host>:<port>``."""
        return f"http://{self.host_port}"

    # --- behaviour ----------------------------------------------------------------------

    def _set(self, behaviour: _Behaviour) -> None:
        with self._lock:
            self._behaviour = behaviour

    def serve(self, models: Iterable[str] = (), loaded: Iterable[str] = ()) -> None:
        """Answer like a healthy Ollama: ``models`` in /api/tags, ``loaded`` in /api/ps."""
        self._set(_Behaviour("healthy", tuple(models), tuple(loaded)))

    def fail(self, status: int = 500) -> None:
        """Answer every request with ``status``."""
        self._set(_Behaviour("status", status=status))

    def garbage(self) -> None:
        """Answer 200 with a body that is not JSON."""
        self._set(_Behaviour("garbage"))

    def slow(self, delay_s: float = 2.0, models: Iterable[str] = ("slow:1b",)) -> None:
        """Answer healthily, but only after ``delay_s`` seconds."""
        self._set(_Behaviour("slow", tuple(models), (), delay_s=delay_s))

    def chat(
        self,
        pieces: Iterable[str],
        prompt_eval_count: int = 26,
        eval_count: int = 298,
        die_after: int | None = None,
        hold: bool = False,
    ) -> None:
        """Answer ``POST /api/chat`` with ``pieces``, then the counts (or die after some,
        or hold the stream open until the client hangs up)."""
        with self._lock:
            self._chat = _Chat(tuple(pieces), prompt_eval_count, eval_count, die_after, hold)

    # --- requests -----------------------------------------------------------------------

    def _chatted(self, path: str, request: dict[str, Any]) -> _Chat:
        with self._lock:
            self._requests[path] += 1
            self.chat_requests.append(request)
            self._lock.notify_all()
            return self._chat

    def _arrived(self, path: str) -> _Behaviour:
        with self._lock:
            self._requests[path] += 1
            self._lock.notify_all()
            return self._behaviour

    def requests(self, path: str | None = None) -> int:
        """Requests received so far (for one path, or in all)."""
        with self._lock:
            return self._requests[path] if path else sum(self._requests.values())

    def _wait_for(self, count: int, path: str | None, timeout: float) -> int:
        def seen() -> int:
            return self._requests[path] if path else sum(self._requests.values())

        with self._lock:
            if not self._lock.wait_for(lambda: seen() >= count, timeout):
                raise TimeoutError(f"{seen()} requests to {path or 'any path'}, expected {count}")
            return seen()

    async def wait_for_requests(
        self, count: int, path: str | None = "/api/tags", timeout: float = 5.0
    ) -> int:
        """Wait until ``count`` requests (to ``path``) have arrived; raises TimeoutError."""
        return await asyncio.to_thread(self._wait_for, count, path, timeout)


OllamaMaker = Callable[..., OllamaStandin]


@pytest.fixture
def make_ollama() -> Iterator[OllamaMaker]:
    """Start stand-ins (healthy, no model); all are stopped at the end of the test."""
    started: list[OllamaStandin] = []

    def make(host: str = "127.0.0.1") -> OllamaStandin:
        standin = OllamaStandin(host).start()
        started.append(standin)
        return standin

    yield make
    for standin in started:
        standin.stop()


@pytest.fixture
def ollama(make_ollama: OllamaMaker) -> OllamaStandin:
    """One started stand-in."""
    return make_ollama()
