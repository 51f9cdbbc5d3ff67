"""A real S3-protocol server on 127.0.0.1 for the tests (moto's, in a thread), counting reads.

Every request goes through a small WSGI layer that counts the ``GET`` requests
per object key, so a test can say how often each zarr chunk was read from
storage, whichever process (the client or a cluster's workers) read it.
"""

from __future__ import annotations

import collections
import threading
from urllib.parse import unquote

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import WSGIRequestHandler, make_server

BUCKET = "dask-gmm-tests"


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


class S3Server:
    """moto's S3 on a free port of 127.0.0.1; ``with S3Server() as s3: ...``.

    Attributes
    ----------
    endpoint : str
        ``http://127.0.0.1:PORT``
    gets : collections.Counter
        ``GET`` requests per path (``/bucket/key``).
    """

    def __init__(self):
        self.gets = collections.Counter()
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            if environ.get("REQUEST_METHOD") == "GET":
                with self._lock:
                    self.gets[unquote(environ.get("PATH_INFO", ""))] += 1
            return app(environ, start_response)

        self._server = make_server("127.0.0.1", 0, counting, threaded=True,
                                   request_handler=_Quiet)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def environment(self):
        """Environment variables pointing boto/s3fs (and worker processes) at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def chunk_reads(self, prefix):
        """``GET`` count of every stored chunk under ``/BUCKET/prefix`` (zarr v3 ``c/`` keys)."""
        root = f"/{BUCKET}/{prefix.strip('/')}/"
        return {path[len(root):]: n for path, n in self.gets.items()
                if path.startswith(root) and "/c/" in "/" + path[len(root):]}
