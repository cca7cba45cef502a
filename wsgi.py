"""WSGI entry point for servers other than `./ms.sh start` (e.g. `waitress-serve wsgi:app`).

The worker pool starts with the app here, because a WSGI server imports this module once per process,
and what startup built is frozen out of the garbage collector's walks, as `ms serve` does.
Prefer `./ms.sh start` (or `python -m msapp serve`): its server hands proxy headers to the app. Under
`waitress-serve` they are deleted first, so the app cannot tell a request a local proxy forwarded from a
local one: there the internal routes admit only requests carrying MS_INTERNAL_TOKEN, and /metrics only
the admin token (docs/operations.md, "Behind a proxy").
"""
from msapp import create_app
from msapp.cli import freeze_startup_objects

app = create_app()
app.extensions["ms"].pool.start()
freeze_startup_objects()
