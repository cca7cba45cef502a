"""WSGI entry point for servers other than `ms.sh start` (e.g. `waitress-serve wsgi:app`).

The worker pool starts with the app here, because a WSGI server imports this module once per process.
"""
from msapp import create_app

app = create_app()
app.extensions["ms"].pool.start()
