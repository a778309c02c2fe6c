from __future__ import annotations

from typing import Any

import pytest

from duckmesh.schema import TableSchema, compatibility_problems

BASE = [{"name": "id", "type": "int64", "nullable": False}, {"name": "n", "type": "int32"},
        {"name": "f", "type": "float32"}, {"name": "s", "type": "string"}, {"name": "d", "type": "decimal(10,2)"}]


def changed(*, add: list[dict[str, Any]] | None = None, drop: str | None = None,
            retype: tuple[str, str] | None = None, required: str | None = None) -> TableSchema:
    columns = [dict(c) for c in BASE if c["name"] != drop]
    for column in columns:
        if retype and column["name"] == retype[0]:
            column["type"] = retype[1]
        if required and column["name"] == required:
            column["nullable"] = False
    return TableSchema.build(columns + (add or []), ["id"])


OLD = TableSchema.build(BASE, ["id"])
ADD_NULLABLE = changed(add=[{"name": "extra", "type": "string"}])
ADD_REQUIRED = changed(add=[{"name": "extra", "type": "string", "nullable": False}])
DROP = changed(drop="s")
WIDEN_INT = changed(retype=("n", "int64"))
WIDEN_FLOAT = changed(retype=("f", "float64"))
WIDEN_DECIMAL = changed(retype=("d", "decimal(12,2)"))
NARROW = changed(retype=("n", "string"))
REQUIRE = changed(required="s")

# change, then allowed? for backward / forward / full / none
CASES = [
    ("add nullable column", ADD_NULLABLE, (True, True, True, True)),
    ("add required column", ADD_REQUIRED, (False, False, False, True)),
    ("drop non-key column", DROP, (False, True, False, True)),
    ("widen int32 to int64", WIDEN_INT, (True, False, False, True)),
    ("widen float32 to float64", WIDEN_FLOAT, (True, False, False, True)),
    ("widen decimal(10,2) to decimal(12,2)", WIDEN_DECIMAL, (True, False, False, True)),
    ("int32 to string is not a widening", NARROW, (False, False, False, False)),
    ("nullable column becomes required", REQUIRE, (False, False, False, True)),
]


@pytest.mark.parametrize(("label", "new", "allowed"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("mode_index", range(4), ids=["backward", "forward", "full", "none"])
def test_each_compatibility_mode_allows_and_refuses_the_documented_changes(
    label: str, new: TableSchema, allowed: tuple[bool, ...], mode_index: int
) -> None:
    mode = ("backward", "forward", "full", "none")[mode_index]
    problems = compatibility_problems(OLD, new, mode)  # type: ignore[arg-type]
    assert (not problems) is allowed[mode_index], problems
    if problems:
        assert all(isinstance(p, str) and p for p in problems)


def test_the_primary_key_never_changes() -> None:
    rekeyed = TableSchema.build(BASE, ["n"])
    for mode in ("backward", "forward", "full", "none"):
        assert any("primary key" in p for p in compatibility_problems(OLD, rekeyed, mode))  # type: ignore[arg-type]


def test_every_problem_is_reported() -> None:
    both = TableSchema.build([c for c in BASE if c["name"] != "s"] + [
        {"name": "extra", "type": "string", "nullable": False}], ["id"])
    assert len(compatibility_problems(OLD, both, "backward")) == 2
