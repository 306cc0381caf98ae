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
