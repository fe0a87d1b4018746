"""How this process logs, from a Config: `--log-config`, dualgate's own stderr handler, the
levels, the access line's format, the PID in a multi-process line, health checks left out.

Rules:
- The application's logging comes first. dualgate's own handler stands aside, record by record,
  whenever a logger above it has handlers (an app that ran `logging.config.dictConfig`, at
  import, in its lifespan start-up or later; a `--log-config` that sets up the root logger):
  the record propagates there and is written once. Deciding per record rather than once at
  start-up costs a walk of two loggers per emitted record and nothing per request otherwise.
- A logger that has handlers dualgate did not put there (an embedding program's, a
  `--log-config`'s) is left as it is.
- `--log-config` is applied once per process, before anything is logged: in the supervisor,
  and again in a spawned worker (a forked one inherits it). It never disables dualgate's own
  loggers, whatever its `disable_existing_loggers` says, and a level it gives them wins over
  `--log-level`. A file that cannot be used is a ConfigError naming it: one line, exit 2.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
from typing import Any, TextIO

from dualgate.config import LOG_CONFIG_KINDS, Config
from dualgate.errors import ConfigError
from dualgate.logs import AccessFormat, access_logger, error_logger, use_access_format

__all__ = ["configure_logging"]

_LINE = "%(asctime)s [%(name)s] %(levelname)s %(message)s"
# With --workers (or --reload) lines of several processes share one stderr.
_LINE_WITH_PID = "%(asctime)s [%(process)d] [%(name)s] %(levelname)s %(message)s"
_DISABLED = logging.CRITICAL + 1
_KINDS = ", ".join(f"{suffix} ({kind})" for suffix, kind in LOG_CONFIG_KINDS.items())

# The --log-config file applied in this process (a forked worker inherits it with the rest of
# the logging set-up), and the levels it gave dualgate's loggers.
_applied: str | None = None
_file_levels: dict[str, int] = {}


class _OwnHandler(logging.StreamHandler[TextIO]):
    """dualgate's stderr handler on one of its loggers: writes a record unless a logger above
    will (see the rules above)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()  # stderr, looked up now: a test's or a worker's redirection holds
        self._logger = logger

    def handle(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = self._logger
        while logger is not None and logger.propagate:
            logger = logger.parent
            if logger is not None and logger.handlers:
                return False
        return super().handle(record)


class _NoHealthChecks(logging.Filter):
    """Leaves out the access records of --health-path answers: probes every few seconds would
    fill the log. The server answers that path (any query, any method) before the application,
    so the path alone tells its answers."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._exact = path
        self._with_query = path + "?"

    def filter(self, record: logging.LogRecord) -> bool:
        path = getattr(record, "path", None)
        return not isinstance(path, str) or (
            path != self._exact and not path.startswith(self._with_query)
        )


def configure_logging(config: Config) -> None:
    """Set up dualgate's logging for `config`; every process that serves or supervises calls it
    first (again is harmless: a Server run twice, a worker after its supervisor)."""
    if config.log_config is not None and config.log_config != _applied:
        _apply_file(config.log_config)
    several = config.workers is not None or config.reload
    formatter = logging.Formatter(_LINE_WITH_PID if several else _LINE)
    for logger in (error_logger, access_logger):
        own = [h for h in logger.handlers if isinstance(h, _OwnHandler)]
        if not logger.handlers:
            handler = _OwnHandler(logger)
            logger.addHandler(handler)
            own.append(handler)
        if own:
            # Propagating, so that handlers above get the record and ours stands aside.
            logger.propagate = True
        for handler in own:
            handler.setFormatter(formatter)
        for old in [f for f in logger.filters if isinstance(f, _NoHealthChecks)]:
            logger.removeFilter(old)
    error_logger.setLevel(_file_levels.get(error_logger.name, config.log_level.upper()))
    access_logger.setLevel(
        _file_levels.get(access_logger.name, logging.INFO) if config.access_log else _DISABLED
    )
    if config.health_path is not None:
        access_logger.addFilter(_NoHealthChecks(config.health_path))
    access_format = config.access_log_format
    use_access_format(None if access_format is None else AccessFormat(access_format))


def _apply_file(path: str) -> None:
    global _applied
    source = f"--log-config {path}"
    suffix = os.path.splitext(path)[1].lower()
    ours = [logging.getLogger("dualgate"), error_logger, access_logger]
    for logger in ours:
        logger.setLevel(logging.NOTSET)  # so that a level seen afterwards is the file's
    try:
        if LOG_CONFIG_KINDS.get(suffix) == "fileConfig":
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file: {path}")
            # As uvicorn: the application's loggers, already made at import, stay enabled.
            logging.config.fileConfig(path, disable_existing_loggers=False)
        else:
            logging.config.dictConfig(_read_dict(path, suffix))
    except Exception as exc:
        raise ConfigError(f"{source}: {_explain(exc)}") from None
    for logger in ours:
        logger.disabled = False
    _file_levels.clear()
    _file_levels.update(
        (logger.name, logger.level) for logger in ours[1:] if logger.level != logging.NOTSET
    )
    _applied = path


def _read_dict(path: str, suffix: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as file:
        if suffix == ".json":
            data = json.load(file)
        elif LOG_CONFIG_KINDS.get(suffix) == "dictConfig":
            data = _yaml().safe_load(file)
        else:
            raise ValueError(f"cannot tell its kind from {suffix!r}: {_KINDS}")
    if not isinstance(data, dict):
        raise ValueError(f"holds a {type(data).__name__}, not a logging.config.dictConfig mapping")
    return data


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise ValueError("a .yaml file needs PyYAML: pip install pyyaml") from None
    return yaml


def _explain(exc: BaseException) -> str:
    """One line for what went wrong: dictConfig wraps the real cause ("Unable to configure
    handler 'x'") and that cause says what it was."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError | json.JSONDecodeError):
        text = f"{type(exc).__name__}: {text}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {_explain(cause)}"
    return " ".join(text.split())
