"""A real HTTP file server on 127.0.0.1 for tests: Range requests, dropped connections, HTML pages.

    with FileServer() as server:
        url = server.add("/model.ckpt", data)                 # plain file, Range supported
        server.add("/flaky.ckpt", data, drop_after=1000)      # first response dies after 1000 bytes
        server.add("/login", b"<!DOCTYPE html>...", content_type="text/html")
        server.add("/release/m.ckpt", b"", redirect="/model.ckpt")   # 302 to another path
        server.stop(); server.start()                         # same port, refused while stopped

Every request is recorded in `server.requests` as (path, Range header or None). `closed_port_url()`
gives a URL on a port nobody listens on (connection refused). Nothing here touches the network.
"""
from __future__ import annotations

import re
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit


@dataclass
class Route:
    """What one path serves, and how it misbehaves."""

    body: bytes
    content_type: str = "application/octet-stream"
    ranges: bool = True  # honour Range requests with 206
    drop_after: Optional[int] = None  # close the connection after this many body bytes...
    drops: int = 1  # ...on this many responses, then serve normally
    status: int = 200
    send_length: bool = True  # send Content-Length
    redirect: Optional[str] = None  # answer 302 to this path (as release links redirect to a CDN)


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        owner = self.server.owner
        path = urlsplit(self.path).path
        range_header = self.headers.get("Range")
        with owner.lock:
            owner.requests.append((path, range_header))
            route = owner.routes.get(path)
            drop = None
            if route is not None and route.drop_after is not None and route.drops > 0 and not head:
                route.drops -= 1
                drop = route.drop_after
        if route is None:
            self._reply(404, b"not found", "text/plain")
            return
        if route.redirect is not None:
            self._reply(302, b"", "text/plain", {"Location": self.server.owner.url(route.redirect)})
            return
        if route.status != 200:
            self._reply(route.status, b"error", "text/plain")
            return
        body, start, status = route.body, 0, 200
        extra = {}
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if route.ranges and m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(body) - 1
            if start >= len(body):
                self._reply(416, b"", "text/plain", {"Content-Range": f"bytes */{len(body)}"})
                return
            end = min(end, len(body) - 1)
            extra["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            body, status = body[start:end + 1], 206
        if route.ranges:
            extra["Accept-Ranges"] = "bytes"
        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        if route.send_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.close_connection = True
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        if drop is not None and drop < len(body):
            self.wfile.write(body[:drop])
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)

    def _reply(self, status: int, body: bytes, ctype: str, headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    owner: "FileServer"


class FileServer:
    """Serves in-memory files on 127.0.0.1 from a background thread; start/stop keep the same port."""

    def __init__(self) -> None:
        self.routes: Dict[str, Route] = {}
        self.requests: List[Tuple[str, Optional[str]]] = []
        self.lock = threading.Lock()
        self.port = 0
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    def add(self, path: str, body: bytes, **options: object) -> str:
        """Serve `body` at `path` (see Route for options); returns its URL."""
        with self.lock:
            self.routes[path] = Route(body, **options)  # type: ignore[arg-type]
        return self.url(path)

    def url(self, path: str) -> str:
        """The URL of `path` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def ranges_requested(self, path: str) -> List[str]:
        """The Range headers sent for `path`, in order."""
        with self.lock:
            return [r for p, r in self.requests if p == path and r]

    def start(self) -> "FileServer":
        """Listen (on a fresh OS-chosen port the first time, the same port after a stop)."""
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; connections to the port are refused until `start()`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def closed_port_url(path: str = "/file") -> str:
    """A loopback URL on a port that was just free, so connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"
