"""The console in ``m2unet-node run``: uvicorn serving :func:`~dicom_node.web.app.create_app` in a
thread, on ``[web] host`` and ``port`` (read at start-up), with its own database connection."""

from __future__ import annotations

import threading
import time

import structlog
import uvicorn

from dicom_node.state import db
from dicom_node.web.app import create_app

log = structlog.get_logger()

START_TIMEOUT = 15.0  # seconds for uvicorn to bind its port


class WebServer:
    def __init__(self, live_config) -> None:
        settings = live_config.current.web
        self.host, self.port = settings.host, settings.port
        self.conn = db.connect(live_config.current.node.data_dir)
        app = create_app(live_config, self.conn)
        # log_config=None: uvicorn's lines go through the node's logging (JSON or console)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_config=None, access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve; :class:`OSError` when the port cannot be bound within :data:`START_TIMEOUT`."""
        self._thread = threading.Thread(target=self._serve, name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                raise OSError(f"web console cannot listen on {self.host}:{self.port} (port in use? see the log)")
            time.sleep(0.05)
        log.info("web_started", url=f"http://{self.host}:{self.port}/")

    def _serve(self) -> None:
        try:
            self._server.run()
        except SystemExit:  # uvicorn exits when it cannot bind: start() reports it
            pass

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10.0)
        self.conn.close()
