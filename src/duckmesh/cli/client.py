"""Commands that talk to a DuckMesh server over HTTP, through the Python client (``duckmesh.client``).

Server and key: ``--server`` / ``--key``, else ``DUCKMESH_SERVER`` / ``DUCKMESH_API_KEY``, else a
profile of the client config file (``duckmesh profile add``); docs/cli.md has the details.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from duckmesh.cli.runtime import bad_file_lines, cli_errors, fail
from duckmesh.client import Client, calls
from duckmesh.client.calls import RetryPolicy
from duckmesh.client.config import config_path, load_config, save_profile
from duckmesh.client.files import FORMATS, FileFormat
from duckmesh.errors import ClientConfigError, RemoteError

ServerOpt = Annotated[str | None, typer.Option("--server", help="server URL [env: DUCKMESH_SERVER]",
                                               show_default=False)]
KeyOpt = Annotated[str | None, typer.Option("--key", help="API key [env: DUCKMESH_API_KEY]", show_default=False)]
ProfileOpt = Annotated[str | None, typer.Option("--profile", help="profile of the client config file",
                                                show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the server's JSON answer")]
OutputFormat = Literal["table", "csv", "json", "ndjson", "arrow"]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)
remote_app = typer.Typer(help="Maintenance runs and API keys on a server, for the key's tenant (needs ops_admin).",
                         no_args_is_help=True)
profile_app = typer.Typer(help="Named servers and keys in the client config file.", no_args_is_help=True)


def connect(server: str | None, key: str | None, profile: str | None, timeout: float = 120.0) -> Client:
    return Client(server, key, profile=profile, timeout=timeout)


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _param(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ClientConfigError(f"--param wants NAME=VALUE, got {text!r}")
    try:
        return name, orjson.loads(raw)
    except orjson.JSONDecodeError:
        return name, raw


def _cell(value: Any) -> str:
    if value is None:
        return "[dim]NULL[/dim]"
    return escape(value if isinstance(value, str) else orjson.dumps(value).decode())


def _result_table(result: Any) -> Table:
    table = Table(show_lines=False, header_style="bold")
    for column in result.columns:
        table.add_column(f"{column['name']}\n[dim]{column['type']}[/dim]", overflow="fold")
    for row in result.rows:
        table.add_row(*(_cell(v) for v in row))
    return table


def sql(
    query: Annotated[str, typer.Argument(help="the SQL (one SELECT); '-' reads it from stdin")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv, json, ndjson or arrow")] = "table",
    snapshot: Annotated[int | None, typer.Option("--snapshot", help="run as of this snapshot id")] = None,
    at: Annotated[str | None, typer.Option("--at", help="run as of this time (RFC 3339): the newest snapshot "
                                                        "created at or before it")] = None,
    wait_token: Annotated[int | None, typer.Option("--wait-token", help="wait until this visibility token "
                                                                        "is visible (read-after-write)")] = None,
    timeout_ms: Annotated[int | None, typer.Option("--wait-timeout-ms", help="how long --wait-token may wait")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="row limit (the server caps it)")] = None,
    query_timeout: Annotated[int | None, typer.Option("--timeout-ms", help="query time limit (the server caps "
                                                                           "it)")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="NAME=VALUE for $NAME (repeatable; "
                                                                         "VALUE is JSON or text)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write csv/ndjson/arrow/json here")] = None,
    server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Run a SQL query and print the result (a table on a terminal)."""
    with cli_errors():
        if fmt not in ("table", "csv", "json", "ndjson", "arrow"):
            raise ClientConfigError(f"--format must be table, csv, json, ndjson or arrow, not {fmt!r}")
        text = sys.stdin.read() if query == "-" else query
        options: dict[str, Any] = {
            "params": dict(_param(p) for p in param) if param else None, "snapshot_id": snapshot,
            "snapshot_time": at, "min_visibility_token": wait_token, "consistency_timeout_ms": timeout_ms,
            "row_limit": limit, "timeout_ms": query_timeout,
        }
        with connect(server, key, profile) as client:
            if fmt in ("csv", "ndjson", "arrow"):
                _write(client.query_export(text, fmt, **options).content, output)
                return
            if fmt == "json":
                body = client.request(_query_call(text, options))
                _write(orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n", output)
                return
            result = client.query(text, **options)
        out.print(_result_table(result))
        note = " (truncated: raise --limit)" if result.truncated else ""
        out.print(f"[dim]{result.row_count} row(s){note} · snapshot {result.snapshot_id} · "
                  f"token {result.max_visibility_token} · {result.stats.get('duration_ms', 0):.1f} ms[/dim]")


def _query_call(text: str, options: dict[str, Any]) -> Any:
    from duckmesh.client import calls

    return calls.post("/v1/query", calls.query_body(text, **options))


def _write(data: bytes, output: Path | None) -> None:
    if output is not None:
        output.write_bytes(data)
        return
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def ingest(
    table: Annotated[str, typer.Argument(help="target table")],
    file: Annotated[Path, typer.Argument(help="an NDJSON, CSV or Parquet file", exists=True, dir_okay=False)],
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="ndjson, csv or parquet (default: by "
                                                                   "extension, else by content)")] = None,
    op: Annotated[str, typer.Option("--op", help="insert or upsert (keyed tables)")] = "insert",
    key_column: Annotated[str | None, typer.Option("--key-column", help="use this column's value as each "
                                                                        "row's idempotency key")] = None,
    key_prefix: Annotated[str | None, typer.Option("--key-prefix", help="idempotency keys are PREFIX-ROW "
                                                                        "(default: from the file's content)")] = None,
    batch_rows: Annotated[int, typer.Option("--batch-rows", min=1, max=10_000, help="rows per request")] = 5000,
    wait: Annotated[bool, typer.Option("--wait", help="wait until the last row is visible")] = False,
    as_json: JsonOpt = False,
    server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Load a file in batches; retried requests and re-runs of the same file store every row once."""
    with cli_errors():
        if fmt is not None and fmt not in FORMATS:
            raise ClientConfigError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        chosen: FileFormat | None = next((f for f in FORMATS if f == fmt), None)
        size = file.stat().st_size
        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[rows]:,} rows"), TransferSpeedColumn(), TimeRemainingColumn(),
            console=err, disable=not err.is_terminal,
        )
        with connect(server, key, profile) as client, progress:
            task = progress.add_task(f"{file.name} → {table}", total=size, rows=0)
            summary = client.ingest_file(
                table, file, fmt=chosen, op=op, key_prefix=key_prefix, key_column=key_column, batch_rows=batch_rows,
                progress=lambda rows, position: progress.update(task, completed=position, rows=rows),
            )
            progress.update(task, completed=size)
            visible = client.wait_for_token(summary.last_token) if wait and summary.last_token else None
    if as_json:
        _print_json({**summary.to_json(), "visible_snapshot_id": visible})
        return
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    out.print(f"{summary.rows:,} rows in {summary.requests} request(s), {summary.seconds:.1f} s ({rate:,.0f} rows/s):"
              f" {summary.accepted:,} new, {summary.duplicates:,} duplicate(s), {summary.retries} retried request(s)")
    out.print(f"last visibility token: {summary.last_token}"
              + (f" (visible in snapshot {visible})" if visible else
                 f"  (read it back: duckmesh sql --wait-token {summary.last_token} ...)"))


def tables(as_json: JsonOpt = False, server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None) -> None:
    """List the tenant's tables with their row, file and byte counts."""
    with cli_errors(), connect(server, key, profile) as client:
        found = client.tables()
    if as_json:
        _print_json(found)
        return
    table = Table("table", "version", "columns", "primary key", "rows", "stored rows", "files", "bytes",
                  header_style="bold")
    for info in found:
        stats = info.get("stats", {})
        table.add_row(info["table_name"], str(info["schema_version"]), str(len(info["columns"])),
                      ", ".join(info.get("primary_key", [])) or "-", _rows(stats.get("logical_rows")),
                      f"{stats.get('rows', 0):,}", str(stats.get("files", 0)), _bytes(stats.get("bytes", 0)))
    out.print(table if found else "no tables yet (create one: POST /v1/tables, see docs/getting-started.md)")


def _rows(count: int | None) -> str:
    return "?" if count is None else f"{count:,}"


def _bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return str(count)


def describe(
    table_name: Annotated[str, typer.Argument(metavar="TABLE", help="table name")],
    as_json: JsonOpt = False, server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """A table's columns, key, stats and every schema version."""
    with cli_errors(), connect(server, key, profile) as client:
        info = client.table(table_name)
        history = client.table_schemas(table_name)
    if as_json:
        _print_json({"table": info, "schemas": history})
        return
    keys = set(info.get("primary_key", []))
    title = f"{table_name} (schema version {info['schema_version']})"
    columns = Table("column", "type", "nullable", "key", title=title, header_style="bold", title_justify="left")
    for column in info["columns"]:
        columns.add_row(column["name"], column["type"], "yes" if column.get("nullable", True) else "no",
                        "primary key" if column["name"] in keys else "")
    out.print(columns)
    stats = info.get("stats", {})
    out.print(f"rows {_rows(stats.get('logical_rows'))} (stored {stats.get('rows', 0):,}) · "
              f"files {stats.get('files', 0)} · {_bytes(stats.get('bytes', 0))} · "
              f"partition by {', '.join(info.get('partition_by', [])) or '-'} · "
              f"compatibility {info.get('compatibility_mode')} · created {info.get('created_at')}")
    versions = Table("version", "created", "mode", "columns", title="schema history", header_style="bold",
                     title_justify="left")
    for version in history.get("schemas", []):
        names = ", ".join(f"{c.get('name')} {c.get('type')}" for c in version.get("columns", []))
        versions.add_row(str(version.get("schema_version")), str(version.get("created_at", "")),
                         str(version.get("compatibility_mode", "")), names)
    out.print(versions)


def schema(
    samples: Annotated[int, typer.Option("--samples", min=0, max=20, help="sample rows per table (0-20)")] = 0,
    as_json: JsonOpt = False, server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Every table with its typed columns, key and rows, as tools and the query assistant see them."""
    with cli_errors(), connect(server, key, profile) as client:
        overview = client.schema_overview(samples)
    if as_json:
        _print_json(overview)
        return
    for table in overview["tables"]:
        keys = set(table.get("primary_key", []))
        columns = ", ".join(f"{c['name']} {c['type']}{' (key)' if c['name'] in keys else ''}" for c in table["columns"])
        out.print(f"[bold]{table['table_name']}[/bold] · rows {_rows(table.get('row_count'))} · {columns}")
        for row in table.get("sample_rows", []):
            out.print("  " + " | ".join(_cell(v) for v in row))
    out.print(f"[dim]snapshot {overview.get('snapshot_id')} · token {overview.get('max_visibility_token')}[/dim]")


def ask(
    prompt: Annotated[str, typer.Argument(help="the question in plain words")],
    run: Annotated[bool, typer.Option("--run", help="run the suggested SQL when the sandbox accepts it")] = False,
    as_json: JsonOpt = False, server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Suggest SQL for a question (POST /v1/query/translate; needs query assist enabled on the server)."""
    with cli_errors(), connect(server, key, profile) as client:
        suggestion = client.translate(prompt)
        if as_json:
            _print_json(suggestion)
            return
        out.print(suggestion["sql"], markup=False, highlight=False)
        verdict = "accepted by the sandbox" if suggestion["sandbox_ok"] else \
            f"refused by the sandbox ({suggestion.get('sandbox_error_code')})"
        out.print(f"[dim]{suggestion['provider']} {suggestion['model']} · {verdict}[/dim]")
        for warning in suggestion.get("warnings", []):
            out.print(warning, style="yellow", markup=False, highlight=False)
        if not run:
            return
        if not suggestion["sandbox_ok"]:
            raise fail("not run: the sandbox refuses the suggested SQL")
        result = client.query(suggestion["sql"])
    out.print(_result_table(result))
    out.print(f"[dim]{result.row_count} row(s) · snapshot {result.snapshot_id}[/dim]")


def snapshots(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="how many, newest first")] = 20,
    as_json: JsonOpt = False, server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """The tenant's snapshots, newest first (ids for `duckmesh sql --snapshot`)."""
    with cli_errors(), connect(server, key, profile) as client:
        found = client.snapshots(limit)
    if as_json:
        _print_json(found)
        return
    table = Table("snapshot", "created", "kind", "by", "token", "tables", "pinned", header_style="bold")
    for snap in found["snapshots"]:
        tables_text = ", ".join(f"{name} ({t.get('rows', 0):,} rows)" for name, t in snap.get("tables", {}).items())
        table.add_row(str(snap["snapshot_id"]), snap["created_at"], snap["kind"], snap.get("created_by") or "",
                      str(snap["max_visibility_token"]), tables_text, "yes" if snap.get("pinned") else "")
    out.print(table)


def _lag_table(current: dict[str, Any], rate: float | None) -> Table:
    table = Table("measure", "value", title=f"freshness · tenant {current.get('tenant_id')}", header_style="bold",
                  title_justify="left")
    rows = [
        ("pending events", f"{current.get('pending_events', 0):,}"),
        ("claimed events", f"{current.get('claimed_events', 0):,}"),
        ("failed events (dead letters)", f"{current.get('failed_events', 0):,}"),
        ("oldest pending", f"{(current.get('oldest_pending_age_ms') or 0) / 1000:.1f} s"),
        ("latest issued token", str(current.get("latest_issued_token"))),
        ("latest visible token", str(current.get("latest_visibility_token"))),
        ("token lag", f"{current.get('token_lag', 0):,}"),
        ("latest snapshot", f"{current.get('latest_snapshot_id')} at {current.get('latest_snapshot_time')}"),
    ]
    if rate is not None:
        rows.append(("ingest rate", f"{rate:,.0f} events/s"))
    for name, value in rows:
        table.add_row(name, value)
    for name, t in sorted((current.get("tables") or {}).items()):
        age = t.get("oldest_pending_age_ms")
        table.add_row(f"table {name}", f"{t.get('pending_events', 0):,} pending,"
                      f" {t.get('claimed_events', 0):,} claimed, {t.get('failed_events', 0):,} failed,"
                      f" oldest {(age or 0) / 1000:.1f} s, watermark {t.get('watermark')}")
    return table


def _caught_up(current: dict[str, Any]) -> bool:
    return not (current.get("pending_events") or current.get("claimed_events") or current.get("token_lag"))


def _wait_caught_up(client: Client, timeout: float, interval: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    current = client.lag()
    while not _caught_up(current):
        if time.monotonic() >= deadline:
            _print_json(current)
            raise fail(f"error: still behind after {timeout:g} s: {current.get('pending_events')} pending,"
                       f" {current.get('claimed_events')} claimed, token lag {current.get('token_lag')}")
        time.sleep(min(interval, 1.0))
        current = client.lag()
    return current


def lag(
    once: Annotated[bool, typer.Option("--once", help="print once and exit (for scripts)")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.2, help="refresh every N seconds")] = 2.0,
    wait: Annotated[bool, typer.Option("--wait", help="wait until nothing is pending or claimed and every issued"
                                                      " token is visible (exit 1 after --timeout)")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0, help="how long --wait waits, in seconds")] = 60.0,
    as_json: JsonOpt = False, server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Ingest lag and freshness of the tenant, per table too: a live view (Ctrl-C ends it), --once, or --wait."""
    with cli_errors(), connect(server, key, profile) as client:
        current = _wait_caught_up(client, timeout, interval) if wait else client.lag()
        if as_json:
            _print_json(current)
            return
        if once or wait:
            out.print(_lag_table(current, None))
            return
        with Live(_lag_table(current, None), console=out, refresh_per_second=4) as live:
            try:
                while True:
                    before, started = current, time.monotonic()
                    time.sleep(interval)
                    current = client.lag()
                    issued = current.get("latest_issued_token", 0) - before.get("latest_issued_token", 0)
                    live.update(_lag_table(current, issued / (time.monotonic() - started)))
            except KeyboardInterrupt:
                pass


def dead_letters(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    replay: Annotated[list[int] | None, typer.Option("--replay", help="replay this event id (repeatable)")] = None,
    as_json: JsonOpt = False, server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Events that could not be materialized, and their replay (needs ops_admin)."""
    with cli_errors(), connect(server, key, profile) as client:
        if replay:
            answer = client.replay_dead_letters(replay)
            _print_json(answer)
            return
        found = client.dead_letters(limit)
    if as_json:
        _print_json(found)
        return
    table = Table("event", "table", "key", "failed at", "reason", header_style="bold")
    for item in found["dead_letters"]:
        table.add_row(str(item.get("event_id")), str(item.get("table_name", item.get("table_id", ""))),
                      str(item.get("idempotency_key", "")), str(item.get("failed_at", "")),
                      str(item.get("failure_reason", "")))
    out.print(table if found["dead_letters"] else "no dead letters")


RemoteJob = Literal["compaction", "retention", "integrity"]


def _call_job(client: Client, job: RemoteJob, body: dict[str, Any]) -> dict[str, Any]:
    if job == "compaction":
        return client.run_compaction(**body)
    if job == "retention":
        return client.run_retention(**body)
    return client.run_integrity(**body)


def _run_remote(job: RemoteJob, server: str | None, key: str | None, profile: str | None,
                body: dict[str, Any]) -> None:
    with cli_errors(), connect(server, key, profile, timeout=3600) as client:
        try:
            answer = _call_job(client, job, body)
        except RemoteError as exc:
            for line in bad_file_lines(exc.context):
                err.print(line, markup=False)
            raise
    _print_json(answer)


@remote_app.command("compaction")
def remote_compaction(
    table: Annotated[str | None, typer.Option(help="only this table")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="plan only, change nothing")] = False,
    server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Compact small files now (POST /v1/compaction/run)."""
    _run_remote("compaction", server, key, profile, {"table": table, "dry_run": dry_run})


@remote_app.command("retention")
def remote_retention(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count only, change nothing")] = False,
    server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Expire snapshots and collect unreferenced files now (POST /v1/retention/run)."""
    _run_remote("retention", server, key, profile, {"dry_run": dry_run})


@remote_app.command("integrity")
def remote_integrity(
    table: Annotated[str | None, typer.Option(help="only this table")] = None,
    deep: Annotated[bool, typer.Option("--deep", help="also verify content hashes and row counts")] = False,
    server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Validate the tenant's files now (POST /v1/integrity/run); lists bad files and exits 1 on failure."""
    _run_remote("integrity", server, key, profile, {"table": table, "deep": deep})


@remote_app.command("restore")
def remote_restore(
    snapshot_id: Annotated[int, typer.Argument(help="the snapshot whose tables come back")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list the tables and rows that would change")]
    = False,
    server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Publish a new snapshot with the file sets of an older one (POST /v1/snapshots/restore)."""
    with cli_errors(), connect(server, key, profile) as client:
        _print_json(client.restore_snapshot(snapshot_id, dry_run=dry_run))


@remote_app.command("pin")
def remote_pin(
    snapshot_id: Annotated[int, typer.Argument(help="the snapshot retention must keep")],
    reason: Annotated[str, typer.Option("--reason", help="why it is kept")],
    expires_at: Annotated[str | None, typer.Option("--expires-at", help="RFC 3339; default: never")] = None,
    server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Pin a snapshot: retention never expires it, so its files stay (POST /v1/snapshots/pin)."""
    with cli_errors(), connect(server, key, profile) as client:
        _print_json(client.pin_snapshot(snapshot_id, reason, expires_at))


@remote_app.command("ready")
def remote_ready(server: ServerOpt = None) -> None:
    """A process's readiness (GET /v1/ready, no key): its checks and read-only mode; exit 1 if not ready."""
    with cli_errors(), Client(server, None, retry=RetryPolicy(attempts=1), timeout=15) as client:
        try:
            answer = client.ready()
        except RemoteError as exc:
            if exc.server_code != "NOT_READY":
                raise
            _print_json({"status": "not ready", **exc.context})
            raise typer.Exit(1) from None
    _print_json(answer)


@remote_app.command("metrics")
def remote_metrics(
    match: Annotated[str | None, typer.Option("--match", help="only lines containing this text")] = None,
    server: ServerOpt = None,
) -> None:
    """A process's Prometheus metrics, optionally only matching lines. ``--server`` is the process's
    metrics listener (DUCKMESH_METRICS_ADDR, e.g. http://127.0.0.1:9464), not its API address."""
    with cli_errors(), Client(server, None, retry=RetryPolicy(attempts=2), timeout=15) as client:
        text = client.metrics()
    for line in text.splitlines():
        if match is None or (match in line and not line.startswith("#")):
            sys.stdout.write(line + "\n")


read_only_remote = typer.Typer(help="Read-only mode of the key's tenant (GET/PUT /v1/read-only, ops_admin).",
                               no_args_is_help=True)


@read_only_remote.command("on")
def remote_read_only_on(
    reason: Annotated[str, typer.Option("--reason", help="why (shown to refused writers, audited)")],
    server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Refuse the tenant's writes with 503 READ_ONLY; queries go on."""
    with cli_errors(), connect(server, key, profile) as client:
        _print_json(client.set_read_only(True, reason))


@read_only_remote.command("off")
def remote_read_only_off(server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None) -> None:
    """Let the tenant write again (the operator's global switch, if on, still applies)."""
    with cli_errors(), connect(server, key, profile) as client:
        _print_json(client.set_read_only(False))


@read_only_remote.command("status")
def remote_read_only_status(server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None) -> None:
    """Whether the tenant may write now, and which switch stops it."""
    with cli_errors(), connect(server, key, profile) as client:
        _print_json(client.read_only())


remote_app.add_typer(read_only_remote, name="read-only")
@remote_app.command("key-create")
def remote_key_create(
    role: Annotated[list[str], typer.Option(help="role (repeatable): ingest_writer, query_reader, ...")],
    expires_at: Annotated[str | None, typer.Option(help="expire at this RFC 3339 time")] = None,
    server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Create a key of this key's tenant (POST /v1/keys); the secret is printed once."""
    body: dict[str, Any] = {"roles": role, **({"expires_at": expires_at} if expires_at else {})}
    with cli_errors(), connect(server, key, profile) as client:
        _print_json(client.request(calls.post("/v1/keys", body)))


@remote_app.command("key-list")
def remote_key_list(server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None) -> None:
    """Keys of this key's tenant with roles and dates, never secrets (GET /v1/keys)."""
    with cli_errors(), connect(server, key, profile) as client:
        _print_json(client.request(calls.get("/v1/keys")))


@remote_app.command("key-revoke")
def remote_key_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id (key-list)")],
    server: ServerOpt = None, key: KeyOpt = None, profile: ProfileOpt = None,
) -> None:
    """Revoke a key of this key's tenant (DELETE /v1/keys/{key_id})."""
    with cli_errors(), connect(server, key, profile) as client:
        _print_json(client.request(calls.delete(calls.key_path(key_id))))


@profile_app.command("add")
def profile_add(
    name: Annotated[str, typer.Argument(help="profile name")],
    server: Annotated[str, typer.Option("--server", help="server URL")],
    key: Annotated[str | None, typer.Option("--key", help="API key (stored in the file, mode 600)")] = None,
    default: Annotated[bool, typer.Option("--default", help="make it the default profile")] = False,
) -> None:
    """Add or replace a profile in the client config file."""
    path = config_path()
    with cli_errors():
        save_profile(name, server.rstrip("/"), key, make_default=default, path=path)
    out.print(f"profile {name!r} saved in {path}")


@profile_app.command("list")
def profile_list() -> None:
    """Profiles of the client config file (keys are never printed)."""
    path = config_path()
    with cli_errors():
        config = load_config(path)
    default = config.get("default_profile")
    table = Table("profile", "server", "key", "default", title=str(path), header_style="bold", title_justify="left")
    for name, values in sorted(config.get("profiles", {}).items()):
        table.add_row(name, str(values.get("server", "")), "set" if values.get("key") else "-",
                      "yes" if name == default else "")
    out.print(table)


def register(app: typer.Typer, panel: str) -> None:
    for command, name in ((sql, "sql"), (ingest, "ingest"), (tables, "tables"), (describe, "describe"),
                          (schema, "schema"), (ask, "ask"), (snapshots, "snapshots"), (lag, "lag"),
                          (dead_letters, "dead-letters")):
        app.command(name, rich_help_panel=panel)(command)
    app.add_typer(remote_app, name="remote", rich_help_panel=panel)
    app.add_typer(profile_app, name="profile", rich_help_panel=panel)
