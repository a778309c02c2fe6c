"""SQL sandbox, first line of defence: parse with sqlglot (DuckDB dialect) and allow only one
read-only query over the tenant's own tables.

What runs in DuckDB is the SQL regenerated from the checked syntax tree, never the original
text, so comment and quoting tricks cannot make DuckDB see something the checker did not.
The second line of defence is DuckDB itself (see ``engine.py``): external access disabled
except the tenant's own file directory, and configuration locked.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from duckmesh.domain import EVENT_TIME_COLUMN
from duckmesh.errors import QueryInvalid, SqlNotAllowed, TableNotFound
from duckmesh.query import functions, pruning

_REFUSED_STATEMENTS = (
    exp.Command, exp.Pragma, exp.Set, exp.Copy, exp.Create, exp.Insert, exp.Update, exp.Delete, exp.Drop,
    exp.Alter, exp.Use, exp.Attach, exp.Detach, exp.Install, exp.Describe, exp.Summarize,
)
# Where a function stands in for a table (FROM, JOIN, LATERAL): only generators may be called there.
_TABLE_POSITIONS = (exp.Table, exp.Lateral, exp.From, exp.Join)
# A call as sqlglot renders it for DuckDB: the name DuckDB will look up.
_CALL_HEAD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")
# Deeper nesting than any real query needs; refused before parsing (the parser recurses per level).
MAX_NESTING = 128
# Verdicts are cached up to this many bytes of SQL text and table names.
CACHE_BYTES = 8 * 1024 * 1024


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
    reads_event_time: bool = False  # the query names _dm_event_time: the views carry it
    constraints: pruning.Constraints = field(default_factory=dict, compare=False)  # values WHERE fixes


def _call_name(node: exp.Func) -> str | None:
    """The name DuckDB will call for ``node``, or None when sqlglot renders it as syntax that is
    not a call (``[1, 2]``, ``CASE``, ``x + INTERVAL ...``); DuckDB's own parse of the final SQL is
    checked again in the engine, so syntax cannot smuggle in a call either."""
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    name = str(node.sql_name()).lower()
    if functions.scalar_allowed(name) or functions.table_allowed(name):
        return name
    head = _CALL_HEAD.match(_render_shallow(node))
    return head.group(1).lower() if head else None


def _render_shallow(node: exp.Func) -> str:
    """``node`` rendered for DuckDB with placeholder arguments (cheap even for deeply nested SQL)."""
    args: dict[str, object] = {}
    for key, value in node.args.items():
        if isinstance(value, exp.Expr):
            args[key] = exp.Literal.number(1)
        elif isinstance(value, list):
            args[key] = [exp.Literal.number(1) for _ in value]
        else:
            args[key] = value
    try:
        return str(type(node)(**args).sql(dialect="duckdb"))
    except Exception:  # a generator that needs its real arguments: render the real node
        return str(node.sql(dialect="duckdb"))


def _check_function(node: exp.Func) -> None:
    parent = node.parent
    if isinstance(parent, exp.Dot) and node.arg_key == "expression":
        raise SqlNotAllowed("qualified function names are not allowed", function=str(node.sql_name()).lower())
    name = _call_name(node)
    if isinstance(parent, _TABLE_POSITIONS) and node.arg_key == "this":
        if name is None or not functions.table_allowed(name):
            shown = name or str(node.sql_name()).lower()
            raise SqlNotAllowed(f"table function {shown}() is not allowed", function=shown)
    elif name is not None and not functions.scalar_allowed(name):
        raise SqlNotAllowed(f"function {name}() is not allowed", function=name)


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
    dashboard queries skip the ~1 ms parse); refusals are not cached. The cache is bounded in
    bytes, not entries: a few huge texts cannot hold the process's memory. Blocking and CPU-bound
    for long texts: call it off the event loop."""
    allowed = frozenset(t.lower() for t in tenant_tables)
    key = (sql, allowed)
    found = _VERDICTS.get(key)
    if found is None:
        found = _check(sql, allowed)
        _VERDICTS.put(key, found, len(sql) + len(found.sql) + sum(len(t) + 8 for t in allowed))
    return found


class _VerdictCache:
    """Least recently used entries first out, bounded by the bytes of their texts."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, frozenset[str]], tuple[CheckedQuery, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, frozenset[str]]) -> CheckedQuery | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: tuple[str, frozenset[str]], verdict: CheckedQuery, cost: int) -> None:
        if cost > self.max_bytes // 8:
            return  # one entry never takes more than an eighth of the cache
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            self._entries[key] = (verdict, cost)
            self._bytes += cost
            while self._bytes > self.max_bytes:
                _, (_, freed) = self._entries.popitem(last=False)
                self._bytes -= freed

    @property
    def size_bytes(self) -> int:
        return self._bytes


_VERDICTS = _VerdictCache(CACHE_BYTES)


def _check(sql: str, allowed: frozenset[str]) -> CheckedQuery:
    if not sql or not sql.strip():
        raise SqlNotAllowed("the query is empty")
    _refuse_other_dialects(sql)
    if _nesting(sql) > MAX_NESTING:
        raise QueryInvalid(f"the query is nested more than {MAX_NESTING} levels deep", max_nesting=MAX_NESTING)
    try:
        return _check_tree(sql, allowed)
    except RecursionError:
        raise QueryInvalid("the query is nested too deeply to check", max_nesting=MAX_NESTING) from None


def _check_tree(sql: str, allowed: frozenset[str]) -> CheckedQuery:
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
            _check_function(node)
        if isinstance(node, exp.Table):
            used |= _check_table(node, allowed, _visible_ctes(node))
        if isinstance(node, _REFUSED_STATEMENTS):
            raise SqlNotAllowed("only read-only queries are allowed", statement=node.key)
    ctes = frozenset(cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE))
    reads_event_time = pruning.reads_event_time(tree)
    natural = any(str(join.args.get("method") or "").upper() == "NATURAL" for join in tree.find_all(exp.Join))
    if reads_event_time and natural:
        raise QueryInvalid(f"a query that names {EVENT_TIME_COLUMN} cannot use NATURAL JOIN: every table then carries"
                           " that column and the join would match on it too; join with ON or USING (columns)")
    return CheckedQuery(tree.sql(dialect="duckdb"), frozenset(used), reads_event_time,
                        pruning.constraints(tree, frozenset(used), ctes))


def _nesting(sql: str) -> int:
    """The deepest parenthesis or bracket nesting of ``sql`` (quotes are not parsed: this only has
    to bound what the parser will see, and a quoted bracket can only make the count larger)."""
    depth = deepest = 0
    for char in sql:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}" and depth:
            depth -= 1
    return deepest


def _check_table(node: exp.Table, allowed: frozenset[str], ctes: set[str]) -> set[str]:
    target = node.this
    if isinstance(target, exp.Func):
        return set()  # checked as a function in a table position
    if not isinstance(target, exp.Identifier):
        raise SqlNotAllowed("only the tenant's tables can be queried")
    if node.args.get("db") or node.args.get("catalog"):
        raise SqlNotAllowed("qualified table names are not allowed; use the bare table name", table=node.sql())
    name = str(target.this).lower()
    if name in ctes:
        return set()
    if name not in allowed:
        if _SYSTEM_NAMES.match(name) or not _PLAIN_NAME.fullmatch(name):
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
