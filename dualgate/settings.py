"""Where `dualgate serve` takes its settings from: the command line, the environment, an env
file and a TOML config file, each read by the same description of Config's fields.

Precedence, highest first: the command line, the real environment (`DUALGATE_PORT=9000`), the
env file (`--env-file`), the config file (`--config`), `WEB_CONCURRENCY` for `--workers` only,
then Config's defaults. A setting given in several places takes the value of the highest one
whole: a repeatable one is replaced, never merged.

- Environment: `DUALGATE_<FLAG>`, the long flag's name in upper case with `_` for `-`. Booleans
  take true/false, 1/0, yes/no, on/off; a repeatable setting takes its values separated by
  commas (`--header`: one a line); an empty variable counts as unset. Variables under
  `DUALGATE_` that name no setting are left alone (others use the prefix too) and listed by
  `--print-config`.
- Env file: `KEY=VALUE` lines read as python-dotenv reads them (comments, blank lines, `export`,
  single and double quotes with their escapes, values over several lines in quotes,
  `${NAME}` and `${NAME:-default}`), but a line it cannot read is an error here, not a warning.
  Its variables go into the environment of the application before it is imported, unless the
  real environment has them; its `DUALGATE_*` ones are settings too.
- Config file: TOML, one key per setting by its long flag name (dashes or underscores), the
  positive name for a boolean (`access-log = false`), an array for a repeatable one; `app` and
  `env-file` too. An unknown key is an error.

Every value read here is checked with the field's own check, and a bad one is a ConfigError
whose message starts with its source (`DUALGATE_PORT=abc: ...`, `dualgate.toml: ...`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dualgate.config import SECTIONS, Config
from dualgate.errors import ConfigError

__all__ = [
    "CONFIG_VARIABLE",
    "ENV_FILE_VARIABLE",
    "ENV_PREFIX",
    "SETTINGS",
    "Resolved",
    "Setting",
    "read_env_file",
    "render",
    "resolve",
]

ENV_PREFIX = "DUALGATE_"
CONFIG_VARIABLE = "DUALGATE_CONFIG"
ENV_FILE_VARIABLE = "DUALGATE_ENV_FILE"
# dualgate's own, not settings: where the sources are, and a spawned worker's payload.
_NOT_SETTINGS = {CONFIG_VARIABLE, ENV_FILE_VARIABLE, "DUALGATE_WORKER"}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class Setting:
    """One field of Config as every source names and reads it."""

    name: str
    kind: type  # bool, int, float or str; of each item for a repeatable one
    optional: bool  # None is a value (the default: not set)
    repeatable: bool
    choices: tuple[str, ...]
    also_int: bool  # str | int: TOML may give either (--ssl-cert-reqs 2)
    field: dataclasses.Field[Any]

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        return self.name.replace("_", "-")

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def section(self) -> str:
        return str(self.field.metadata["section"])

    @property
    def help(self) -> str:
        return str(self.field.metadata["help"])

    @property
    def metavar(self) -> str:
        return str(self.field.metadata.get("metavar", self.name.upper()))

    @property
    def is_flag(self) -> bool:
        return bool(self.field.metadata.get("flag", True))

    @property
    def default(self) -> Any:
        """The default as --help says it: computed ones say from what."""
        if self.field.default is dataclasses.MISSING:
            return self.field.metadata.get("shown_default")
        return self.field.default

    def describe(self) -> str:
        """What a value of it is, for an error message."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        what = {bool: "true or false", int: "a whole number", float: "a number"}
        return what.get(self.kind, "text")

    def check(self, value: Any) -> None:
        check: Callable[[str, Any], None] | None = self.field.metadata.get("check")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.flag} takes {self.describe()}, got {value!r}")
        if check is not None:
            check(self.flag, value)

    def from_text(self, text: str) -> Any:
        """The value of an environment variable (or an env file line) for this setting."""
        if self.repeatable:
            separator = self.field.metadata.get("env_separator", ",")
            return tuple(item.strip() for item in text.split(separator) if item.strip())
        text = text.strip()
        if self.kind is bool:
            if text.lower() not in _TRUE | _FALSE:
                raise ConfigError(f"{self.flag} takes true/false, 1/0, yes/no or on/off")
            return text.lower() in _TRUE
        if self.kind in (int, float):
            try:
                return self.kind(text)
            except ValueError:
                raise ConfigError(f"{self.flag} takes {self.describe()}, got {text!r}") from None
        return text

    def from_toml(self, value: object) -> Any:
        """A config file's value for this setting, of the type TOML gave it."""
        if self.repeatable:
            items = [value] if isinstance(value, str) else value
            if isinstance(items, list) and all(isinstance(i, str) for i in items):
                return tuple(items)
            raise ConfigError(f"{self.flag} takes a string or an array of strings")
        fits = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
            str: isinstance(value, str) or (self.also_int and type(value) is int),
        }
        if not fits[self.kind]:
            raise ConfigError(f"{self.flag} takes {self.describe()}, got {value!r}")
        if self.kind is float and isinstance(value, int):
            return float(value)
        return value


def _describe(item: dataclasses.Field[Any], hint: Any) -> Setting:
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        optional = type(None) in args
        concrete = [arg for arg in args if arg is not type(None)]
        also_int = concrete == [str, int]
        hint = concrete[0]
    else:
        also_int = False
    repeatable = typing.get_origin(hint) is tuple
    if repeatable:
        hint = typing.get_args(hint)[0]
    choices: tuple[str, ...] = ()
    if typing.get_origin(hint) is typing.Literal:
        choices, hint = typing.get_args(hint), str
    if hint not in (bool, int, float, str):
        hint = str  # the application: MODULE:ATTR here, a callable only from Python
    return Setting(item.name, hint, optional, repeatable, choices, also_int, item)


_HINTS = typing.get_type_hints(Config)
# Every field of Config: the flags in their order, and `app` (given as the positional one).
SETTINGS = {item.name: _describe(item, _HINTS[item.name]) for item in dataclasses.fields(Config)}
_BY_VARIABLE = {setting.variable: setting for setting in SETTINGS.values()}


# -- the env file -----------------------------------------------------------------------------

_WS = r"[^\S\r\n]*"
_LINE = re.compile(
    rf"""\s*(?:
        (?P<comment>\#[^\r\n]*)
      | (?:export[^\S\r\n]+)?
        (?:'(?P<qkey>[^']+)'|(?P<key>[^=\#\s]+)) {_WS}
        (?:={_WS}(?:
            '(?P<single>(?:\\'|[^'])*)'
          | "(?P<double>(?:\\"|[^"])*)"
          | (?P<plain>(?!['"])[^\r\n]*)
        ))?
        (?:{_WS}\#[^\r\n]*)?
    ){_WS}(?:\r\n|\n|\r|\Z)""",
    re.VERBOSE,
)
_DOUBLE_ESCAPES = re.compile(r"\\[\\'\"abfnrtv]")
_SINGLE_ESCAPES = re.compile(r"\\[\\']")
_VARIABLE = re.compile(r"\$\{(?P<name>[^}:]*)(?::-(?P<default>[^}]*))?\}")
_C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape(pattern: re.Pattern[str], text: str) -> str:
    return pattern.sub(lambda m: _C_ESCAPES.get(m.group()[1], m.group()[1]), text)


def _env_lines(text: str, label: str) -> Iterator[tuple[str, str | None]]:
    position = 0
    while text[position:].strip():
        found = _LINE.match(text, position)
        if found is None:
            start = len(text) - len(text[position:].lstrip())
            line = text.count("\n", 0, start) + 1
            raise ConfigError(f"{label}: line {line}: cannot read {text[start:].splitlines()[0]!r}")
        position = found.end()
        if found["comment"] is not None:
            continue
        key = found["qkey"] or found["key"]
        if found["single"] is not None:
            value: str | None = _unescape(_SINGLE_ESCAPES, found["single"])
        elif found["double"] is not None:
            value = _unescape(_DOUBLE_ESCAPES, found["double"])
        elif found["plain"] is not None:
            # An unquoted value ends where a comment starts: at a # after whitespace.
            value = re.sub(r"\s+#.*", "", found["plain"]).rstrip()
        else:
            value = None  # a name alone: python-dotenv leaves it unset
        yield key, value


def read_env_file(path: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of an env file, `${NAME}` in them taken from the ones above it and from
    `environ` (which wins, as it does when they are loaded)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as exc:
        raise ConfigError(f"--env-file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--env-file {path}: not UTF-8 ({exc.reason})") from None
    values: dict[str, str] = {}
    for key, value in _env_lines(text, path):
        if value is not None:
            values[key] = _expand(value, {**values, **environ})
    return values


def _expand(value: str, known: Mapping[str, str]) -> str:
    return _VARIABLE.sub(lambda m: known.get(m["name"], m["default"] or ""), value)


# -- the config file --------------------------------------------------------------------------


def _read_config_file(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _unknown(label: str, key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{label}: unknown key {key!r}{hint}")


# -- all of them together ---------------------------------------------------------------------


@dataclass
class Resolved:
    """The settings as every source together gives them, and where each came from."""

    values: dict[str, Any] = field(default_factory=dict)  # Config's keyword arguments
    origins: dict[str, str] = field(default_factory=dict)
    # The env file's variables the real environment does not already have.
    environment: dict[str, str] = field(default_factory=dict)
    # DUALGATE_* variables that name no setting, with where they were.
    ignored: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # which files were read, and why

    def export(self) -> None:
        """Put the env file's variables into this process's environment, which the
        application (and every worker) inherits."""
        os.environ.update(self.environment)


def _take(setting: Setting, value: Any, label: str) -> Any:
    try:
        setting.check(value)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    return value


def resolve(command_line: Mapping[str, Any], environ: Mapping[str, str]) -> Resolved:
    """Every source of settings, by precedence. `command_line`: Config's keyword arguments
    given on it, plus `env_file` and `config` when those were."""
    given = dict(command_line)
    resolved = Resolved()
    env_file, env_file_why = _where(given.pop("env_file", None), environ, ENV_FILE_VARIABLE)
    file_env: dict[str, str] = {}
    if env_file is not None:
        file_env = read_env_file(env_file, environ)
        resolved.files.append(f"env file: {env_file} ({env_file_why})")
        if ENV_FILE_VARIABLE in file_env:
            raise ConfigError(f"{env_file}: {ENV_FILE_VARIABLE} cannot name another env file")
    config_file, config_why = _where(given.pop("config", None), environ, CONFIG_VARIABLE)
    if config_file is None and CONFIG_VARIABLE in file_env:
        config_file, config_why = file_env[CONFIG_VARIABLE], f"{CONFIG_VARIABLE} in {env_file}"
    from_file: dict[str, Any] = {}
    if config_file is not None:
        from_file = _config_values(config_file)
        resolved.files.append(f"config file: {config_file} ({config_why})")
        named = from_file.pop("env_file", None)
        if named is not None and env_file is None:
            env_file = str(named)
            file_env = read_env_file(env_file, environ)
            resolved.files.append(f"env file: {env_file} (env-file in {config_file})")
            if {CONFIG_VARIABLE, ENV_FILE_VARIABLE} & set(file_env):
                raise ConfigError(f"{env_file}: named by {config_file}, it cannot name files")
    resolved.environment = {k: v for k, v in file_env.items() if k not in environ}

    sources = [("environment", environ), (env_file or "", file_env)]
    for where, variables in sources:
        for name in variables:
            if name.startswith(ENV_PREFIX) and name not in _BY_VARIABLE.keys() | _NOT_SETTINGS:
                resolved.ignored.append(f"{name} ({where})")

    for name, setting in SETTINGS.items():
        if name in given:
            resolved.values[name], resolved.origins[name] = given[name], "command line"
            continue
        for where, variables in sources:
            text = variables.get(setting.variable, "")
            if text.strip():
                label = f"{setting.variable}={text}"
                if where != "environment":
                    label = f"{where}: {label}"
                try:
                    value = setting.from_text(text)
                except ConfigError as exc:
                    raise ConfigError(f"{label}: {exc}") from None
                resolved.values[name] = _take(setting, value, label)
                resolved.origins[name] = f"{where}: {setting.variable}"
                break
        else:
            if name in from_file:
                resolved.values[name] = from_file[name]
                resolved.origins[name] = str(config_file)
            elif name == "workers":
                _web_concurrency(setting, sources, resolved)
    return resolved


def _where(given: str | None, environ: Mapping[str, str], variable: str) -> tuple[str | None, str]:
    if given is not None:
        return given, "command line"
    if environ.get(variable):
        return environ[variable], variable
    return None, ""


def _config_values(path: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    known = {s.key: s for s in SETTINGS.values() if s.is_flag or s.name == "app"}
    for key, value in _read_config_file(path).items():
        setting = known.get(key.replace("_", "-"))
        if key.replace("_", "-") == "env-file":
            if not isinstance(value, str):
                raise ConfigError(f"{path}: env-file takes the path of an env file")
            values["env_file"] = value
            continue
        if setting is None:
            raise _unknown(path, key, [*known, "env-file"])
        if setting.name in values:
            raise ConfigError(f"{path}: {key!r} is given twice (dashes and underscores)")
        try:
            values[setting.name] = _take(setting, setting.from_toml(value), path)
        except ConfigError as exc:
            if str(exc).startswith(path):
                raise
            raise ConfigError(f"{path}: {key} = {_toml(value)}: {exc}") from None
    return values


def _web_concurrency(
    setting: Setting, sources: list[tuple[str, Mapping[str, str]]], resolved: Resolved
) -> None:
    # gunicorn's and uvicorn's default for the number of workers, set by Heroku and others.
    for where, variables in sources:
        text = variables.get("WEB_CONCURRENCY", "").strip()
        if text:
            label = f"WEB_CONCURRENCY={text}"
            if where != "environment":
                label = f"{where}: {label}"
            if not text.isdigit():
                raise ConfigError(f"{label}: takes a whole number of worker processes")
            resolved.values["workers"] = _take(setting, int(text), label)
            resolved.origins["workers"] = f"{where}: WEB_CONCURRENCY"
            return


# -- --print-config ---------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def render(config: Config, resolved: Resolved) -> str:
    """The settings `config` holds as a config file would give them, each with its source."""
    lines = ["# The settings dualgate serve runs with, and where each comes from."]
    lines += [f"# {line}" for line in resolved.files]
    lines += [f"# ignored, no setting of dualgate: {name}" for name in resolved.ignored]
    rows: dict[str, list[tuple[str, str]]] = {section: [] for section in SECTIONS}
    for name, setting in SETTINGS.items():
        value = getattr(config, name)
        origin = resolved.origins.get(name, "default")
        if value is None:
            text = f"# {setting.key} = (not set)"
        elif setting.field.metadata.get("secret"):
            text = f'{setting.key} = "(hidden)"'
        else:
            text = f"{setting.key} = {_toml(value)}"
        if name == "app":
            lines.append(f"{text}  # {origin}")
        else:
            rows[setting.section].append((text, origin))
    for section, entries in rows.items():
        width = max(len(text) for text, _ in entries)
        lines += ["", f"# -- {SECTIONS[section]}"]
        lines += [f"{text.ljust(width)}  # {origin}" for text, origin in entries]
    return "\n".join(lines) + "\n"
