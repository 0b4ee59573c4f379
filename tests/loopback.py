"""A WSGI app served on a free loopback port in a thread: the start and stop every fake
outside system in these tests shares."""

from __future__ import annotations

import logging
import threading
from typing import Any, Self

from werkzeug.serving import make_server


class LoopbackServer:
    """Subclasses implement ``_wsgi``; ``with Fake() as fake: fake.url``."""

    _server: Any = None

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        raise NotImplementedError

    def __enter__(self) -> Self:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request is noise
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"
