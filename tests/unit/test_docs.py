"""The documentation stays inside the repository and names what exists."""

from __future__ import annotations

import re
from pathlib import Path

from duckmesh.observability import metrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s)`'\"<>]+")
_LOOPBACK = re.compile(r"^[a-z0-9+]+://(127\.0\.0\.1|localhost|0\.0\.0\.0)([:/]|$)")


def test_readme_and_docs_never_point_outside_the_repository() -> None:
    outside = [(doc.name, url) for doc in DOCS for url in _URL.findall(doc.read_text())
               if url.startswith(("http://", "https://")) and not _LOOPBACK.match(url)]
    assert outside == []


def test_every_relative_link_in_readme_and_docs_resolves_to_a_file_in_the_repository() -> None:
    broken = []
    for doc in DOCS:
        for target in _LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("#"):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() or ROOT not in path.parents:
                broken.append((doc.name, target))
    assert broken == []


def test_every_metric_the_reference_mapping_names_as_ours_is_exported() -> None:
    text = (ROOT / "docs" / "coming-from-reference.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    ours = re.findall(r"^\| `duckmesh_[a-z_]+` \| `(duckmesh_[a-z_]+)` \|", section, re.MULTILINE)
    exported = {family.name for family in metrics.REGISTRY.collect()}
    exported |= {f"{name}_total" for name in exported}
    assert len(ours) >= 18
    assert sorted(set(ours) - exported) == []
