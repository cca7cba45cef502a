"""A faithful MoySklad stand-in (Phone API 1.0 and the JSON API 1.2 subset) for tests, demos, benchmarks.

Nothing in the product imports this package; `./ms.sh sandbox` runs it alone.
"""
from __future__ import annotations

from typing import Optional

from flask import Flask, jsonify

from msapp.tools.sandbox.state import SandboxError, SandboxState


def create_sandbox_app(seed_path: Optional[str] = None, json_weight: int = 3) -> Flask:
    from msapp.tools.sandbox import tasks  # noqa: F401 - adds the task routes to remap_bp
    from msapp.tools.sandbox.api import phone_bp, remap_bp, reply
    from msapp.tools.sandbox.control import bp as control_bp

    app = Flask(__name__)
    app.extensions["sandbox"] = SandboxState(seed_path, json_weight=json_weight)
    app.register_blueprint(phone_bp)
    app.register_blueprint(remap_bp)
    app.register_blueprint(control_bp)

    @app.errorhandler(SandboxError)
    def _sandbox_error(exc: SandboxError):
        return reply(exc.body(), exc.status, exc.headers)

    @app.errorhandler(404)
    def _not_found(_exc):
        return reply({"errors": [{"error": "Неизвестный путь", "code": 1021}]}, 404)

    @app.errorhandler(405)
    def _method(_exc):
        return reply({"errors": [{"error": "Метод не поддерживается", "code": 1039}]}, 405)

    @app.get("/")
    def _index():
        return jsonify({"sandbox": "MoySklad stand-in", "phone_api": "/api/phone/1.0",
                        "json_api": "/api/remap/1.2", "control": "/sandbox/api/", "page": "/sandbox/"})

    return app


class SandboxServer:
    """The sandbox on a real socket in a background thread (for tests, the demo and the benchmark)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, seed_path: Optional[str] = None,
                 threads: int = 24):
        from waitress import create_server

        self.app = create_sandbox_app(seed_path)
        self.server = create_server(self.app, host=host, port=port, threads=threads, ident="ms-sandbox")
        self.port = self.server.socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = None

    @property
    def state(self) -> SandboxState:
        return self.app.extensions["sandbox"]

    @property
    def phone_url(self) -> str:
        return self.url + "/api/phone/1.0"

    @property
    def json_url(self) -> str:
        return self.url + "/api/remap/1.2"

    def start(self) -> SandboxServer:
        from msapp.web.server import serve_in_thread

        self._thread = serve_in_thread(self.server)
        return self

    def stop(self) -> None:
        self.server.close()
        if self._thread is not None:
            self._thread.join(5)
