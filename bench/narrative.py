"""The report's prose, kept apart from its figures.

``narrative.md`` holds every explanation the report prints, one block per ``### key`` heading.
A block has no figures of its own: each number it shows is a ``{placeholder}`` filled from this
run's measurements or settings, or from a committed measurement file (tests/bench checks that
the file holds no digits outside placeholders and code spans).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

SOURCE = Path(__file__).resolve().with_name("narrative.md")
_HEADING = re.compile(r"^### (?P<key>[a-z0-9_]+)\s*$", re.MULTILINE)


@functools.cache
def blocks() -> dict[str, str]:
    source = SOURCE.read_text()
    found: dict[str, str] = {}
    marks = list(_HEADING.finditer(source))
    for mark, after in zip(marks, [*marks[1:], None], strict=False):
        end = after.start() if after is not None else len(source)
        found[mark["key"]] = source[mark.end():end].strip()
    return found


def text(key: str, **values: str) -> str:
    """The block ``key`` with its placeholders filled (every placeholder must be given)."""
    return blocks()[key].format(**values)


def figures_outside_placeholders(source: str) -> list[str]:
    """Numbers written into the prose itself (placeholders, code spans and names like p95 aside)."""
    stripped = re.sub(r"\{[a-z0-9_]+\}|`[^`]*`|^### .*$", " ", source, flags=re.MULTILINE)
    return re.findall(r"(?<![\w.])\d[\d,.]*", stripped)
