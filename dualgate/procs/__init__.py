"""Processes: the supervisor, its worker processes, the reloader, the gunicorn worker.

"Worker" in dualgate always means a process; the WSGI pool has threads.

May import: the stdlib, `dualgate.config`, `dualgate.errors`, `dualgate.logs`, `dualgate.net`,
`dualgate.metrics`. A worker process runs a server handed to it; the process layer never
imports the launcher back.
"""
