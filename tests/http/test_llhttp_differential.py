"""A differential check: each raw request in tests/corpus/requests/ through dualgate's request
reader and through llhttp (httptools), an independent parser written in another language.

Where they disagree, tests/corpus/DIFFERENCES.md must list the request with the reason dualgate
is right (an RFC 9112/9110 section); a disagreement it does not list fails, and so does a row
whose request no longer disagrees. tests/differential.py says how each view is read.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.differential import Outcome, dualgate_view, llhttp_view

CORPUS = Path(__file__).parent.parent / "corpus"
REQUESTS = sorted((CORPUS / "requests").glob("*.http"))
ROW = re.compile(r"^\| `([a-z0-9.-]+)` \|(.*)$", re.MULTILINE)
ROWS = {name: rest for name, rest in ROW.findall((CORPUS / "DIFFERENCES.md").read_text())}


def describe(outcome: Outcome) -> str:
    lines = [f"{outcome.end} {outcome.status or ''} {outcome.detail}".rstrip()]
    for message in outcome.messages:
        method, target, headers, version, body, keep_alive = message
        lines.append(f"  {method!r} {target[:60]!r} HTTP/{version.decode()} keep={keep_alive}")
        lines.append(f"    headers {headers!r:.300}")
        lines.append(f"    body {body[:60]!r} ({len(body)} bytes)")
    return "\n".join(lines)


def test_the_corpus_covers_the_smuggling_families() -> None:
    names = {path.stem for path in REQUESTS}
    assert len(names) >= 150
    for family in ("cl-te", "te-cl", "te-", "cl-duplicate", "bare-lf", "bare-cr", "obs-fold",
                   "chunk-size-overflow", "chunk-ext-bare-lf", "nul-", "space-before-colon",
                   "absolute-form", "valid-"):  # fmt: skip
        assert any(name.startswith(family) for name in names), family


@pytest.mark.parametrize("path", REQUESTS, ids=[path.stem for path in REQUESTS])
def test_dualgate_and_llhttp_agree_or_the_difference_is_listed(path: Path) -> None:
    data = path.read_bytes()
    ours, theirs = dualgate_view(data), llhttp_view(data)
    if path.stem in ROWS:
        assert not ours.same_as(theirs), (
            f"{path.stem} is listed in DIFFERENCES.md, but both now give:\n{describe(ours)}"
        )
    else:
        assert ours.same_as(theirs), (
            f"dualgate and llhttp disagree on {path.stem}; fix dualgate or list it in "
            f"DIFFERENCES.md with the reason dualgate is right.\n"
            f"dualgate: {describe(ours)}\nllhttp:   {describe(theirs)}"
        )


def test_every_listed_difference_is_a_corpus_request_with_its_rfc_section() -> None:
    names = {path.stem for path in REQUESTS}
    assert ROWS, "no rows found in DIFFERENCES.md"
    for name, rest in ROWS.items():
        assert name in names, f"DIFFERENCES.md lists {name}, which is not in the corpus"
        assert re.search(r"RFC 9(110|112) section \d", rest), f"{name}: cite the RFC section"


@pytest.mark.parametrize("path", REQUESTS, ids=[path.stem for path in REQUESTS])
def test_the_reader_gives_the_same_view_however_the_bytes_arrive(path: Path) -> None:
    # A TCP stream may be cut anywhere; byte by byte only for the smaller requests, since the
    # reader looks over its whole head window at each piece.
    data = path.read_bytes()
    whole = dualgate_view(data)
    for piece in (1, 2, 7, 64) if len(data) <= 8192 else (997, 4096):
        split = dualgate_view(data, piece)
        assert split.same_as(whole) and split.status == whole.status, f"pieces of {piece} bytes"
