"""SQL sandbox, first line of defence: parse with sqlglot (DuckDB dialect) and allow only one
read-only query over the tenant's own tables.

What runs in DuckDB is the SQL regenerated from the checked syntax tree, never the original
text, so comment and quoting tricks cannot make DuckDB see something the checker did not.
The second line of defence is DuckDB itself (see ``engine.py``): external access disabled
except the tenant's own file directory, and configuration locked.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from duckmesh.errors import QueryInvalid, SqlNotAllowed, TableNotFound

# Function names refused anywhere: file/URL readers, environment and settings access,
# catalog introspection, dynamic SQL and extension loading.
_DENIED_FUNCTIONS = re.compile(
    r"^(read_.*|.*_scan|scan_.*|glob|getenv|current_setting|duckdb_.*|pragma_.*|query|query_table|"
    r"sniff_csv|parquet_.*|iceberg_.*|delta_.*|load|install|.*_extension.*|file|which_secret|"
    r"json_execute_serialized_sql|sql_auto_complete|enable_.*|disable_.*|checkpoint|force_checkpoint|"
    r"from_substrait.*|get_substrait.*|set_.*|current_database|current_schemas?|"
    r"has_.*_privilege|pg_.*|sqlite_.*|postgres_.*|mysql_.*|http.*|s3_.*|copy_.*|export_.*|import_.*)$",
    re.IGNORECASE,
)
_REFUSED_STATEMENTS = (
    exp.Command, exp.Pragma, exp.Set, exp.Copy, exp.Create, exp.Insert, exp.Update, exp.Delete, exp.Drop,
    exp.Alter, exp.Use, exp.Attach, exp.Detach, exp.Install, exp.Describe, exp.Summarize,
)
# Table functions that only generate values (no I/O) may appear in FROM.
_ALLOWED_TABLE_FUNCTIONS = (exp.GenerateSeries, exp.Unnest, exp.ExplodingGenerateSeries)


# What people coming from other engines type, and where DuckMesh has it instead.
_STATEMENT_HINTS = {
    "show": "SHOW is not run here: GET /v1/tables lists your tables (duckmesh tables)",
    "describe": "DESCRIBE is not run here: GET /v1/tables/{table} has the columns (duckmesh describe TABLE)",
    "summarize": "SUMMARIZE is not run here: GET /v1/tables/{table} has the columns and stats",
}
_TIME_TRAVEL = re.compile(r"\bAT\s*\(\s*(VERSION|TIMESTAMP)\s*=>", re.IGNORECASE)
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+([A-Za-z]\w*)\s*;?\s*$", re.IGNORECASE)
# Names of other engines' catalogs: refused as such, never suggested as typos of a table.
_PLAIN_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SYSTEM_NAMES = re.compile(r"^(pg_|duckdb_|sqlite_|information_schema|sys)", re.IGNORECASE)


@dataclass(frozen=True)
class CheckedQuery:
    sql: str
    tables: frozenset[str]


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name)
    return str(node.sql_name())


def _inside(node: exp.Expr, ancestor: exp.Expr) -> bool:
    current: exp.Expr | None = node
    while current is not None:
        if current is ancestor:
            return True
        current = current.parent
    return False


def _visible_ctes(node: exp.Expr) -> set[str]:
    """CTE names in scope at ``node``, following DuckDB's scoping: a WITH's names are visible in
    its query's body; inside a CTE's own body only the earlier CTEs are, and the CTE itself only
    in the recursive branch of a WITH RECURSIVE union. A name used anywhere else is a table
    reference and must be one of the tenant's tables (so a CTE elsewhere in the statement can
    never smuggle in a catalog view such as ``pg_settings``)."""
    visible: set[str] = set()
    child, parent = node, node.parent
    while parent is not None:
        if isinstance(parent, exp.With) and isinstance(child, exp.CTE):
            ctes = list(parent.expressions)
            position = next(i for i, cte in enumerate(ctes) if cte is child)
            visible |= {cte.alias_or_name.lower() for cte in ctes[:position]}
            body = child.this
            if parent.args.get("recursive") and isinstance(body, exp.Union) and _inside(node, body.expression):
                visible.add(child.alias_or_name.lower())
        elif isinstance(parent, exp.Query):
            with_ = parent.args.get("with") or parent.args.get("with_")
            if isinstance(with_, exp.With) and child is not with_:
                visible |= {cte.alias_or_name.lower() for cte in with_.expressions}
        child, parent = parent, parent.parent
    return visible


def check(sql: str, tenant_tables: Iterable[str]) -> CheckedQuery:
    """Return the SQL to run and the tenant tables it reads; raise SqlNotAllowed or QueryInvalid.

    The verdict depends only on the text and the set of table names, so it is cached (repeated
    dashboard queries skip the ~1 ms parse); refusals are not cached."""
    return _check_cached(sql, frozenset(t.lower() for t in tenant_tables))


@functools.lru_cache(maxsize=4096)
def _check_cached(sql: str, allowed: frozenset[str]) -> CheckedQuery:
    if not sql or not sql.strip():
        raise SqlNotAllowed("the query is empty")
    _refuse_other_dialects(sql)
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except (ParseError, TokenError) as exc:
        raise QueryInvalid("the SQL could not be parsed", reason=str(exc).splitlines()[0][:300]) from None
    if len(statements) != 1:
        raise SqlNotAllowed("exactly one statement is allowed", statements=len(statements))
    tree = statements[0]
    if not isinstance(tree, exp.Query):
        hint = _STATEMENT_HINTS.get(tree.key)
        raise SqlNotAllowed("only SELECT (or WITH ... SELECT) queries are allowed" + (f"; {hint}" if hint else ""),
                            statement=tree.key, **({"hint": hint} if hint else {}))
    used: set[str] = set()
    for node in tree.walk():
        if isinstance(node, exp.Func):
            name = _function_name(node)
            if _DENIED_FUNCTIONS.match(name):
                raise SqlNotAllowed(f"function {name.lower()}() is not allowed", function=name.lower())
        if isinstance(node, exp.Table):
            used |= _check_table(node, allowed, _visible_ctes(node))
        if isinstance(node, _REFUSED_STATEMENTS):
            raise SqlNotAllowed("only read-only queries are allowed", statement=node.key)
    return CheckedQuery(tree.sql(dialect="duckdb"), frozenset(used))


def _check_table(node: exp.Table, allowed: frozenset[str], ctes: set[str]) -> set[str]:
    target = node.this
    if isinstance(target, exp.Func):
        if isinstance(target, _ALLOWED_TABLE_FUNCTIONS):
            return set()
        raise SqlNotAllowed(f"table function {_function_name(target).lower()}() is not allowed")
    if not isinstance(target, exp.Identifier):
        raise SqlNotAllowed("only the tenant's tables can be queried")
    if node.args.get("db") or node.args.get("catalog"):
        raise SqlNotAllowed("qualified table names are not allowed; use the bare table name", table=node.sql())
    name = str(target.this).lower()
    if name in ctes:
        return set()
    if name not in allowed:
        if _SYSTEM_NAMES.match(name) or not _PLAIN_NAME.match(name):
            raise SqlNotAllowed(f"unknown table {target.this!r}", table=str(target.this))
        raise _table_not_found(str(target.this), allowed)
    return {name}


def _table_not_found(name: str, allowed: frozenset[str]) -> TableNotFound:
    suggestions = difflib.get_close_matches(name.lower(), sorted(allowed), n=3, cutoff=0.75)
    guess = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
    return TableNotFound(f"table {name!r} not found{guess}", table=name, suggestions=suggestions,
                         hint="GET /v1/tables lists your tables (duckmesh tables)")


def _refuse_other_dialects(sql: str) -> None:
    """Time travel and output formats are request fields here, not SQL clauses: say so."""
    if _TIME_TRAVEL.search(sql):
        raise SqlNotAllowed(
            "time travel is chosen in the request, not in SQL",
            hint='send "snapshot_id": N or "snapshot_time": "RFC 3339" with the query (duckmesh sql --snapshot N)',
        )
    found = _FORMAT_CLAUSE.search(sql)
    if found:
        raise QueryInvalid(
            f"FORMAT {found.group(1)} is not SQL DuckMesh runs: the answer's format is a query parameter",
            hint="POST /v1/query?format=json|csv|ndjson|arrow (duckmesh sql -f csv)",
        )
