"""Processes: the supervisor, its worker processes, the reloader, the gunicorn worker.

"Worker" in dualgate always means a process; the WSGI pool has threads.

Owns: what the supervisor decides (`policy`, pure, with its move tables), what it and its
workers say to each other (`messages`: the pipe protocol and the signal sets), carrying the
decisions out (`supervisor`, `worker`, `reload`), and gunicorn's worker class (`gunicorn`, with
`gunicorn_settings` and `gunicorn_access`).

May import: the stdlib, `dualgate.config`, `dualgate.errors`, `dualgate.hooks`, `dualgate.logs`,
`dualgate.net`, `dualgate.metrics`, `dualgate.version`. A worker process runs the server the
launcher handed it (a `hooks.ServerFactory`), so the process layer never imports the launcher,
and only the gunicorn worker, which gunicorn loads by name, imports `dualgate.server` (and the
HTTP core's `RequestCycle`, whose requests it checks against gunicorn's limits, with
`http.reader`'s Request and `http.paths`, and `wsgi.bridge`'s `build_environ`, from which
gunicorn_access.py builds the environ gunicorn's logger reads).
"""
