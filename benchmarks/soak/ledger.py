"""What the soak's clients know the server must have counted, and the server's /metrics read back.

Every request a client sends is a `Ticket` in its server's `Ledger`, in one of three states:
- answered: a response head came back, so the server counted the request once, with that
  status's class (a response broken off after its head still counts with its status);
- started: the request surely reached its handler, but how its response ended is unknown (an
  HTTP/2 upload the client reset after the server had taken some of its body);
- unsure (the state it is made in): the client cannot tell whether the server read it at all
  (a client that vanished mid-upload, a request on a keep-alive connection the server closed).
So each figure the server exposes must lie in a range: at least what is certain, at most that
plus what is unsure. With only well-behaved clients the range is one number. The same holds
for the HTTP/2 figures (connections, client resets, the server's resets and GOAWAYs) and the
refusals (the 400s garbage gets, the 408s half a head gets), each kept as sure and unsure.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Ledger",
    "Range",
    "Scrape",
    "Ticket",
    "family",
    "interface_of",
    "parse_metrics",
    "status_class",
]

_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    return _CLASSES[status // 100] if 100 <= status <= 599 else "none"


def interface_of(path: str) -> str:
    """The dualgate interface a soak path is served by (the ASGI app is mounted at /asgi)."""
    return "asgi" if path.startswith("/asgi") else "wsgi"


@dataclass
class Range:
    """A figure the client knows to lie within [sure, sure + unsure]."""

    sure: int = 0
    unsure: int = 0

    @property
    def most(self) -> int:
        return self.sure + self.unsure

    def holds(self, value: int) -> bool:
        return self.sure <= value <= self.most

    def __str__(self) -> str:
        return str(self.sure) if not self.unsure else f"{self.sure}..{self.most}"


class Ticket:
    """One request, from the moment it is sent (see the module docstring)."""

    __slots__ = ("_ledger", "interface", "state", "version")

    def __init__(self, ledger: Ledger, version: str, interface: str) -> None:
        self._ledger = ledger
        self.version = version
        self.interface = interface
        self.state = "unsure"
        ledger.unsure[(version, interface)] += 1

    def _leave(self) -> None:
        key = (self.version, self.interface)
        if self.state == "unsure":
            self._ledger.unsure[key] -= 1
        elif self.state == "started":
            self._ledger.started[key] -= 1

    def started(self) -> None:
        if self.state == "unsure":
            self._leave()
            self.state = "started"
            self._ledger.started[(self.version, self.interface)] += 1

    def answered(self, status: int) -> None:
        if self.state != "answered":
            self._leave()
            self.state = "answered"
            self._ledger.answered[(self.version, self.interface, status_class(status))] += 1


@dataclass
class Ledger:
    """What one server must have counted, by the clients' reckoning."""

    answered: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    started: Counter[tuple[str, str]] = field(default_factory=Counter)
    unsure: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Named figures kept as ranges: h2_connections, h2_resets_client, h2_resets_server,
    # h2_goaways_no_error, h2_goaways_error, refusals_<reason>.
    figures: dict[str, Range] = field(default_factory=dict)

    def request(self, version: str, path: str, interface: str | None = None) -> Ticket:
        return Ticket(self, version, interface or interface_of(path))

    def sure(self, name: str, count: int = 1) -> None:
        self.figures.setdefault(name, Range()).sure += count

    def unsure_of(self, name: str, count: int = 1) -> None:
        self.figures.setdefault(name, Range()).unsure += count

    def resolve(self, name: str) -> None:
        """One unsure of `name` turned out sure."""
        figure = self.figures.setdefault(name, Range())
        figure.unsure -= 1
        figure.sure += 1

    def figure(self, name: str) -> Range:
        return self.figures.get(name, Range())

    def by_version(self) -> dict[str, Range]:
        out: dict[str, Range] = {}
        for (version, _i, _c), count in self.answered.items():
            out.setdefault(version, Range()).sure += count
        for (version, _i), count in self.started.items():
            out.setdefault(version, Range()).sure += count
        for (version, _i), count in self.unsure.items():
            out.setdefault(version, Range()).unsure += count
        return out

    def by_interface_and_class(self) -> dict[tuple[str, str], Range]:
        """(interface, class) -> range; what is started or unsure may land in any class."""
        sure: Counter[tuple[str, str]] = Counter()
        loose: Counter[str] = Counter()
        for (_v, interface, klass), count in self.answered.items():
            sure[(interface, klass)] += count
        for (_v, interface), count in (self.started + self.unsure).items():
            loose[interface] += count
        interfaces = {i for i, _ in sure} | set(loose)
        return {
            (interface, klass): Range(sure[(interface, klass)], loose[interface])
            for interface in interfaces
            for klass in _CLASSES
        }

    def by_interface(self) -> dict[str, Range]:
        out: dict[str, Range] = {}
        for (_v, interface, _c), count in self.answered.items():
            out.setdefault(interface, Range()).sure += count
        for (_v, interface), count in self.started.items():
            out.setdefault(interface, Range()).sure += count
        for (_v, interface), count in self.unsure.items():
            out.setdefault(interface, Range()).unsure += count
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "answered": {"/".join(k): v for k, v in sorted(self.answered.items()) if v},
            "started": {"/".join(k): v for k, v in sorted(self.started.items()) if v},
            "unsure": {"/".join(k): v for k, v in sorted(self.unsure.items()) if v},
            "figures": {k: [v.sure, v.unsure] for k, v in sorted(self.figures.items())},
        }


# -- /metrics read back --------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Scrape:
    """Prometheus text (0.0.4) into {(name, sorted labels): value}; comments skipped."""
    out: Scrape = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        found = _SAMPLE.match(line)
        if found is None:
            raise ValueError(f"not a sample line: {line[:100]!r}")
        name, labels, value = found.groups()
        pairs = tuple(sorted(_LABEL.findall(labels or "")))
        out[(name, pairs)] = float(value)
    return out


def family(scrape: Scrape, name: str, label: str) -> dict[str, int]:
    """One labelled counter family as {label value: count}."""
    return {
        dict(labels).get(label, ""): int(value)
        for (metric, labels), value in scrape.items()
        if metric == name
    }
