"""The name gunicorn takes: `gunicorn -k dualgate.gunicorn.Worker app:application`.

The worker itself lives in `dualgate.procs.gunicorn`.
"""

from dualgate.procs.gunicorn import Worker

__all__ = ["Worker"]
