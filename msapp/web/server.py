"""The one way this project builds a waitress server (service, demo, tests)."""
from __future__ import annotations

import threading


def make_server(app, host: str, port: int, threads: int = 4):
    """A bound waitress server that passes proxy headers through to the app.

    waitress (2.x) deletes X-Forwarded-For, Forwarded and friends from untrusted peers by default. The
    internal face must *see* them to refuse proxied requests (a proxy on this host is a loopback peer),
    so they are kept; nothing in the app trusts them for anything else.
    """
    from waitress import create_server

    return create_server(_marked(app), host=host, port=port, threads=threads, ident="ms", channel_timeout=30,
                         clear_untrusted_proxy_headers=False)


def _marked(app):
    """The app, told that its server passes proxy headers through (security.PROXY_HEADERS_KEPT)."""
    from msapp.web.security import PROXY_HEADERS_KEPT

    def wsgi(environ, start_response):
        environ[PROXY_HEADERS_KEPT] = True
        return app(environ, start_response)

    return wsgi


def serve_in_thread(server) -> threading.Thread:
    """Run a server in a daemon thread; closing it from another thread ends the loop quietly."""

    def run():
        try:
            server.run()
        except OSError:  # the socket was closed under select(): that is how it stops
            pass

    thread = threading.Thread(target=run, name="http", daemon=True)
    thread.start()
    return thread
