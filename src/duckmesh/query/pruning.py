"""What a checked query tells the binder beyond its tables: the values its WHERE clauses fix per
column (to skip files of other partitions) and whether it reads the event time.

Only what cannot change a result is taken:
- a table named exactly once in the query (one scan, so one WHERE decides which of its rows count);
- top-level ``AND`` terms of that scan's own WHERE of the form ``column = literal`` or
  ``column IN (literal, ...)``, the column qualified by the table's name or alias, or unqualified
  when the table is the only source of that SELECT. Such terms are false for NULL and for every
  other value, so rows of files whose partition holds another value could never pass them — in
  any join position, outer joins included (a term that rejects NULL turns a row padded for a
  missing match into no row, exactly as if the pruned rows were there and did not match);
- literals only (no parameters, expressions or casts other than ``DATE '…'``).
Anything else simply prunes nothing.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlglot import exp

from duckmesh.domain import EVENT_TIME_COLUMN


@dataclass(frozen=True)
class Literal:
    kind: str  # "string", "number", "bool" or "date"
    text: str


# table name -> column name -> the literals the query allows for it
Constraints = dict[str, dict[str, frozenset[Literal]]]


def reads_event_time(tree: exp.Expr) -> bool:
    """The query names the event time column anywhere (then views carry it)."""
    return any(str(column.name).lower() == EVENT_TIME_COLUMN for column in tree.find_all(exp.Column))


def constraints(tree: exp.Expr, tables: frozenset[str], ctes: frozenset[str]) -> Constraints:
    scans = [t for t in tree.find_all(exp.Table) if isinstance(t.this, exp.Identifier)
             and str(t.this.this).lower() in tables and str(t.this.this).lower() not in ctes]
    counts = Counter(str(t.this.this).lower() for t in scans)
    found: Constraints = {}
    for scan in scans:
        name = str(scan.this.this).lower()
        if counts[name] != 1:
            continue
        fixed = _fixed_by_where(scan)
        if fixed:
            found[name] = fixed
    return found


def _fixed_by_where(scan: exp.Table) -> dict[str, frozenset[Literal]]:
    source = scan.parent
    select = source.parent if isinstance(source, exp.From | exp.Join) else None
    if not isinstance(select, exp.Select) or select.args.get("where") is None:
        return {}
    sources = [s for s in [select.args.get("from_"), *(select.args.get("joins") or [])] if s is not None]
    only_source = len(sources) == 1
    names = {str(scan.this.this).lower(), str(scan.alias_or_name).lower()}
    fixed: dict[str, frozenset[Literal]] = {}
    for term in _conjuncts(select.args["where"].this):
        column, values = _equality(term)
        if column is None or values is None:
            continue
        qualifier = str(column.table).lower()
        if (qualifier and qualifier not in names) or (not qualifier and not only_source):
            continue
        name = str(column.name).lower()
        fixed[name] = fixed[name] & values if name in fixed else values  # two terms: both must hold
    return fixed


def _conjuncts(node: exp.Expr) -> list[exp.Expr]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def _equality(term: exp.Expr) -> tuple[exp.Column | None, frozenset[Literal] | None]:
    if isinstance(term, exp.EQ):
        left, right = term.left, term.right
        if isinstance(right, exp.Column):
            left, right = right, left
        value = _literal(right)
        if isinstance(left, exp.Column) and value is not None:
            return left, frozenset([value])
    if isinstance(term, exp.In) and isinstance(term.this, exp.Column) and not term.args.get("query"):
        values = [_literal(v) for v in term.expressions]
        if values and all(v is not None for v in values):
            return term.this, frozenset(v for v in values if v is not None)
    return None, None


def _literal(node: exp.Expr) -> Literal | None:
    if isinstance(node, exp.Literal):
        return Literal("string" if node.is_string else "number", str(node.this))
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        return Literal("number", f"-{node.this.this}")
    if isinstance(node, exp.Boolean):
        return Literal("bool", "true" if node.this else "false")
    if (isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) and node.this.is_string
            and node.to.is_type(exp.DataType.Type.DATE)):
        return Literal("date", str(node.this.this))
    return None


def matches(column_type: str, stored: Any, allowed: frozenset[Literal]) -> bool | None:
    """Whether a file whose partition value is ``stored`` can hold rows the query keeps: True or
    False when every allowed literal is comparable with the column's type, None (keep the file)
    when one is not (DuckDB would cast, and a cast is not ours to predict)."""
    wanted = [_typed(column_type, literal) for literal in allowed]
    if any(w is _UNKNOWN for w in wanted):
        return None
    if stored is None:
        return False  # NULL equals nothing
    value = _typed(column_type, Literal("string", str(stored)) if column_type != "boolean"
                   else Literal("bool", "true" if stored else "false"))
    return value is not _UNKNOWN and value in wanted


_UNKNOWN = object()


def _typed(column_type: str, literal: Literal) -> Any:
    try:
        if column_type == "string":
            return literal.text if literal.kind == "string" else _UNKNOWN
        if column_type == "date":
            return date.fromisoformat(literal.text).isoformat() if literal.kind in ("string", "date") else _UNKNOWN
        if column_type in ("int32", "int64"):
            return int(literal.text) if literal.kind in ("number", "string") and literal.text.lstrip("-").isdigit() \
                else _UNKNOWN
        if column_type.startswith("decimal"):
            return Decimal(literal.text) if literal.kind in ("number", "string") else _UNKNOWN
        if column_type == "boolean":
            return literal.text == "true" if literal.kind == "bool" else _UNKNOWN
    except (ValueError, InvalidOperation):
        return _UNKNOWN
    return _UNKNOWN
