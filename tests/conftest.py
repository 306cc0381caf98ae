import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from noprop.data import BUNDLED


@pytest.fixture
def mnist_copy(tmp_path) -> Path:
    """A writable copy of the real MNIST files, in tmp_path/mnist."""
    d = tmp_path / "mnist"
    d.mkdir()
    for f in (BUNDLED / "mnist").glob("*.gz"):
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture
def http_server():
    """Serve a folder on 127.0.0.1 (never the internet); yields a function folder -> base URL."""
    servers = []

    def serve(folder: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(folder))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class RangeHandler(QuietHandler):
    """Serves byte ranges (for resumed downloads) and, when the server's `cut_first` is set, ends
    the first response for each path after that many bytes, as a dropped connection would."""

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        seen = self.server.seen
        cut = self.server.cut_first if self.path not in seen else None
        seen.add(self.path)
        self.server.requests.append((self.path, start))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:cut] if cut else body)
        if cut:
            self.close_connection = True


@pytest.fixture
def range_server():
    """A 127.0.0.1 server with Range support; yields serve(folder, cut_first=None) -> (url, server)."""
    servers = []

    def serve(folder: Path, cut_first: int | None = None):
        handler = functools.partial(RangeHandler, directory=str(folder))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.cut_first, srv.seen, srv.requests = cut_first, set(), []
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/", srv

    yield serve
    for s in servers:
        s.shutdown()
        s.server_close()
