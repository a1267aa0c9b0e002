"""A minimal Hugging Face Hub on localhost: `resolve` URLs with HEAD, GET and Range, for download tests.

It serves files from `root/<org>/<name>/` at one commit and logs every request, so tests can see
what was fetched, in which order, and whether ranges (headers only) or whole files were read.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)$")


class FakeHub:
    def __init__(self, root: Path, commit: str) -> None:
        self.root = root
        self.commit = commit
        self.log: list[tuple[str, str, str | None]] = []  # (method, file, range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _respond(self, send_body: bool) -> None:
                match = _RESOLVE.match(self.path.split("?")[0])
                if not match:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.end_headers()
                    return
                repo, path = match["repo"], match["path"]
                hub.log.append((self.command, path, self.headers.get("Range")))
                repo_dir = hub.root / repo
                if not repo_dir.is_dir():
                    self.send_response(401)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("X-Error-Message", "Repository not found")
                    self.end_headers()
                    return
                if (repo_dir / ".gated").exists():
                    self.send_response(403)
                    self.send_header("X-Error-Code", "GatedRepo")
                    self.send_header("X-Error-Message", "Access to this model is restricted")
                    self.end_headers()
                    return
                file = repo_dir / path
                if not file.is_file():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", hub.commit)
                    self.end_headers()
                    return
                size = file.stat().st_size
                start, stop = 0, size - 1
                status = 200
                wanted = self.headers.get("Range")
                if wanted and send_body:
                    first, _, last = wanted.removeprefix("bytes=").partition("-")
                    start, stop = int(first), min(int(last) if last else size - 1, size - 1)
                    status = 206
                self.send_response(status)
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", '"' + hashlib.sha1(f"{repo}/{path}/{size}".encode()).hexdigest() + '"')
                self.send_header("Content-Length", str(stop - start + 1))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{stop}/{size}")
                self.end_headers()
                if send_body:
                    with open(file, "rb") as handle:
                        handle.seek(start)
                        self.wfile.write(handle.read(stop - start + 1))

            def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
                self._respond(send_body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._respond(send_body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def full_downloads(self) -> list[str]:
        """Files fetched whole (GET without Range), in order."""
        return [path for method, path, wanted in self.log if method == "GET" and not wanted]


def online_env(cache_root: Path, endpoint: str) -> dict[str, str]:
    """Environment for a subprocess that talks to the fake Hub only."""
    env = dict(os.environ)
    env.update({"HF_HUB_CACHE": str(cache_root), "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", "NO_COLOR": "1", "COLUMNS": "200"})
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env.pop(name, None)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env
