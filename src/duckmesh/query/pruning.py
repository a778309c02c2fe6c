"""What a checked query tells the binder beyond its tables: the values its WHERE clauses fix per
column (to skip files of other partitions) and whether it reads the event time.

Only what cannot change a result is taken:
- a table named exactly once in the query (one scan, so one WHERE decides which of its rows count),
  read as stored: no column aliases (``t(a, b)``), no PIVOT/UNPIVOT, no sample on the table or its
  SELECT (a sample is drawn before WHERE);
- in a SELECT whose joins are all plain (inner, outer, cross, semi, anti): ASOF and POSITIONAL
  joins pair rows by position or nearest match, so removing rows changes what the others pair
  with, and NATURAL joins are left alone too;
- top-level ``AND`` terms of that SELECT's WHERE of the form ``column = literal`` or
  ``column IN (literal, ...)``, the column qualified by the table's alias (or by its name when it
  has none), or unqualified when the table is the only source of that SELECT. Such terms are
  false for NULL and for every other value, so rows of files whose partition holds another value
  could never pass them — in any plain join position, outer joins included (a term that rejects
  NULL turns a row padded for a missing match into no row, exactly as if the pruned rows were
  there and did not match);
- literals only (no parameters, expressions or casts other than ``DATE '…'``). Each term is kept
  apart (``Terms``): a file is skipped when one term rules it out once its literals are typed for
  the column (query/service.py), never by comparing literals of two terms as text.
Anything else simply prunes nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlglot import exp

from duckmesh.domain import EVENT_TIME_COLUMN
from duckmesh.schema import decimal_params


@dataclass(frozen=True)
class Literal:
    kind: str  # "string", "number", "bool" or "date"
    text: str


# one term per tuple entry: the literals that term allows; every term must hold
Terms = tuple[frozenset[Literal], ...]
# table name -> column name -> its terms
Constraints = dict[str, dict[str, Terms]]
_PLAIN_JOIN_KINDS = frozenset({"", "INNER", "OUTER", "CROSS", "SEMI", "ANTI"})


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


def _fixed_by_where(scan: exp.Table) -> dict[str, Terms]:
    source = scan.parent
    select = source.parent if isinstance(source, exp.From | exp.Join) else None
    if not isinstance(select, exp.Select) or select.args.get("where") is None or not _read_as_stored(scan, select):
        return {}
    sources = [s for s in [select.args.get("from_"), *(select.args.get("joins") or [])] if s is not None]
    only_source = len(sources) == 1
    names = {str(scan.alias_or_name).lower()}  # once aliased, the table's own name means something else
    fixed: dict[str, Terms] = {}
    for term in _conjuncts(select.args["where"].this):
        column, values = _equality(term)
        if column is None or values is None:
            continue
        qualifier = str(column.table).lower()
        if column.args.get("db") or column.args.get("catalog"):
            continue  # x.t.col: a field of a struct column t of source x, not the table's column
        if (qualifier and qualifier not in names) or (not qualifier and not only_source):
            continue
        name = str(column.name).lower()
        fixed[name] = (*fixed.get(name, ()), values)
    return fixed


def _read_as_stored(scan: exp.Table, select: exp.Select) -> bool:
    """The scan's rows reach the SELECT's WHERE as stored and pair with other rows by value only."""
    alias = scan.args.get("alias")
    if (alias is not None and alias.args.get("columns")) or scan.args.get("pivots") or scan.args.get("sample"):
        return False
    if select.args.get("sample"):
        return False
    return all(not join.args.get("method") and str(join.args.get("kind") or "").upper() in _PLAIN_JOIN_KINDS
               for join in select.args.get("joins") or [])


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
    """Whether a file whose partition value is ``stored`` can hold rows one term keeps: True or
    False when every literal of the term is comparable with the column's type, None (keep the
    file) when one is not (DuckDB would cast, and a cast is not ours to predict)."""
    values = allowed_values(column_type, allowed)
    return None if values is None else admits(column_type, stored, values)


def allowed_values(column_type: str, allowed: frozenset[Literal]) -> frozenset[Any] | None:
    """A term's literals typed for the column — once per query, not per file — or None when one
    of them is not comparable with it (then the term rules out no file)."""
    wanted = [_typed(column_type, literal) for literal in allowed]
    return None if any(w is _UNKNOWN for w in wanted) else frozenset(wanted)


def admits(column_type: str, stored: Any, values: frozenset[Any]) -> bool:
    """Whether a file whose partition value is ``stored`` can hold a row whose value is one of
    ``values``: never for NULL (it equals nothing); always for a value that cannot be typed."""
    if stored is None:
        return False
    value = _stored(column_type, stored)
    return value is _UNKNOWN or value in values


def _stored(column_type: str, stored: Any) -> Any:
    """A partition value as recorded with its file (datafiles.partition_value), typed like literals."""
    try:
        if column_type in ("string", "date"):
            return str(stored)
        if column_type in ("int32", "int64"):
            return int(stored)
        if column_type.startswith("decimal"):
            return Decimal(str(stored))
        if column_type == "boolean":
            return bool(stored)
    except (ValueError, InvalidOperation):
        return _UNKNOWN
    return _UNKNOWN


_UNKNOWN = object()
_PLAIN_DECIMAL = re.compile(r"-?[0-9]{1,38}(\.[0-9]{1,38})?\Z")
_PLAIN_INTEGER = re.compile(r"-?[0-9]{1,40}\Z")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def _decimal(column_type: str, literal: Literal) -> Any:
    """A number literal DuckDB compares exactly with the column: plain notation, at most 38
    characters of digits as written (DuckDB counts leading zeros too; beyond 38 the literal is a
    DOUBLE) and no finer than the column's scale. A string is cast (and rounded) to the column's
    scale by DuckDB, an exponent literal is a DOUBLE: neither is ours to predict."""
    if literal.kind != "number" or not _PLAIN_DECIMAL.match(literal.text):
        return _UNKNOWN
    whole, _, fraction = literal.text.lstrip("-").partition(".")
    _, scale = decimal_params(column_type)
    if len(whole) + len(fraction) > 38 or len(fraction) > scale:
        return _UNKNOWN
    return Decimal(literal.text)


def _typed(column_type: str, literal: Literal) -> Any:
    try:
        if column_type == "string":
            return literal.text if literal.kind == "string" else _UNKNOWN
        if column_type == "date":
            ok = literal.kind in ("string", "date") and _ISO_DATE.match(literal.text)
            return date.fromisoformat(literal.text).isoformat() if ok else _UNKNOWN
        if column_type in ("int32", "int64"):
            ok = literal.kind in ("number", "string") and _PLAIN_INTEGER.match(literal.text)
            return int(literal.text) if ok else _UNKNOWN
        if column_type.startswith("decimal"):
            return _decimal(column_type, literal)
        if column_type == "boolean":
            return literal.text == "true" if literal.kind == "bool" else _UNKNOWN
    except (ValueError, InvalidOperation):
        return _UNKNOWN
    return _UNKNOWN
