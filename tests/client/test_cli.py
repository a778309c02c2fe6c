"""Every client command of the ``duckmesh`` CLI, run as a real process against a real server."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from duckmesh.api.context import AppContext
from duckmesh.cli.runtime import build_query_assist
from tests.client.conftest import CliResult, LiveServer
from tests.conftest import make_settings
from tests.fake_openai import running_fake_openai
from tests.helpers import create_table

KEYED = [
    {"name": "id", "type": "int64", "nullable": False},
    {"name": "name", "type": "string"},
    {"name": "zip", "type": "string"},
    {"name": "amount", "type": "decimal(12,2)"},
    {"name": "at", "type": "timestamp"},
]


def rows(count: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "name": f"n{i}", "zip": f"{i:05d}", "amount": f"{i}.25", "at": "2024-05-01T12:00:00Z"}
            for i in range(start, start + count)]


def write_ndjson(path: Path, data: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    return path


def ok(result: CliResult) -> CliResult:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def one_error_line(result: CliResult, code: str) -> None:
    assert result.returncode == 1, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: {code}: "), result.stderr
    assert "Traceback" not in result.stderr


async def setup_table(live: LiveServer, name: str = "events", primary_key: list[str] | None = None) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        await create_table(http, live.headers, name, KEYED, primary_key)


def last_token(result: CliResult) -> int:
    line = next(line for line in result.stdout.splitlines() if line.startswith("last visibility token:"))
    return int(line.split(":")[1].split()[0])


async def count(run_cli: Any, live: LiveServer, token: int, table: str = "events") -> int:
    result = ok(await run_cli("sql", f"SELECT count(*) AS n FROM {table}", "--wait-token", str(token),
                              "--format", "json", server=live))
    return int(json.loads(result.stdout)["rows"][0][0])


async def test_ingest_of_an_ndjson_file_prints_the_last_token_and_a_rerun_stores_nothing_twice(
    live_server: LiveServer, run_cli: Any, tmp_path: Path
) -> None:
    await setup_table(live_server)
    source = write_ndjson(tmp_path / "events.ndjson", rows(1200))
    first = ok(await run_cli("ingest", "events", str(source), "--batch-rows", "500", server=live_server))
    assert "1,200 rows in 3 request(s)" in first.stdout and "1,200 new" in first.stdout
    token = last_token(first)
    assert token == 1200
    again = ok(await run_cli("ingest", "events", str(source), server=live_server))
    assert "0 new, 1,200 duplicate(s)" in again.stdout and last_token(again) == token
    assert await count(run_cli, live_server, token) == 1200


async def test_ingest_reads_csv_cells_as_the_tables_column_types(
    live_server: LiveServer, run_cli: Any, tmp_path: Path
) -> None:
    await setup_table(live_server)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["id", "name", "zip", "amount", "at"])
    writer.writeheader()
    writer.writerows(rows(50))
    source = tmp_path / "events.csv"
    source.write_text(buffer.getvalue())
    result = ok(await run_cli("ingest", "events", str(source), "--json", server=live_server))
    summary = json.loads(result.stdout)
    assert summary["rows"] == summary["accepted"] == 50
    answer = ok(await run_cli("sql", "SELECT zip, amount FROM events WHERE id = 7", "--wait-token",
                              str(summary["last_token"]), "-f", "json", server=live_server))
    assert json.loads(answer.stdout)["rows"] == [["00007", "7.25"]]  # the zip code stayed text


async def test_ingest_of_a_parquet_file_with_wait_reports_the_snapshot_that_made_it_visible(
    live_server: LiveServer, run_cli: Any, tmp_path: Path
) -> None:
    await setup_table(live_server, primary_key=["id"])
    source = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": r["id"], "name": r["name"]} for r in rows(300)]), source)
    result = ok(await run_cli("ingest", "events", str(source), "--op", "upsert", "--key-column", "id", "--wait",
                              "--json", server=live_server))
    summary = json.loads(result.stdout)
    assert summary["accepted"] == 300 and summary["visible_snapshot_id"] is not None
    assert await count(run_cli, live_server, summary["last_token"]) == 300


async def test_a_bad_row_fails_the_ingest_with_the_servers_error_code_in_one_line(
    live_server: LiveServer, run_cli: Any, tmp_path: Path
) -> None:
    await setup_table(live_server)
    source = write_ndjson(tmp_path / "bad.ndjson", [{"id": "not a number"}])
    one_error_line(await run_cli("ingest", "events", str(source), server=live_server), "VALIDATION_FAILED")


async def test_sql_prints_a_typed_table_and_every_machine_format(
    live_server: LiveServer, run_cli: Any, tmp_path: Path
) -> None:
    await setup_table(live_server)
    token = last_token(ok(await run_cli("ingest", "events", str(write_ndjson(tmp_path / "e.ndjson", rows(3))),
                                        server=live_server)))
    query = "SELECT id, amount FROM events ORDER BY id"
    table = ok(await run_cli("sql", query, "--wait-token", str(token), server=live_server))
    assert "BIGINT" in table.stdout and "DECIMAL(12,2)" in table.stdout and "2.25" in table.stdout
    assert "3 row(s)" in table.stdout
    as_csv = ok(await run_cli("sql", query, "-f", "csv", server=live_server))
    assert as_csv.stdout.splitlines() == ['"id","amount"', "0,0.25", "1,1.25", "2,2.25"]
    as_ndjson = ok(await run_cli("sql", query, "-f", "ndjson", server=live_server))
    assert [json.loads(line) for line in as_ndjson.stdout.splitlines()][2] == {"id": 2, "amount": "2.25"}
    as_json = json.loads(ok(await run_cli("sql", query, "-f", "json", server=live_server)).stdout)
    assert as_json["row_count"] == 3 and as_json["max_visibility_token"] >= token
    as_arrow = ok(await run_cli("sql", query, "-f", "arrow", server=live_server))
    with pa.ipc.open_stream(as_arrow.stdout_bytes) as reader:
        assert reader.read_all().column("id").to_pylist() == [0, 1, 2]
    ok(await run_cli("sql", query, "-f", "csv", "--limit", "2", "-o", str(tmp_path / "out.csv"), server=live_server))
    assert (tmp_path / "out.csv").read_text().splitlines() == ['"id","amount"', "0,0.25", "1,1.25"]


async def test_sql_reads_the_query_from_stdin_and_binds_params(live_server: LiveServer, run_cli: Any) -> None:
    result = ok(await run_cli("sql", "-", "-p", "x=41", "-f", "json", server=live_server,
                              stdin=b"SELECT $x + 1 AS answer"))
    assert json.loads(result.stdout)["rows"] == [[42]]


async def test_sql_time_travels_by_snapshot_id_and_by_time(
    live_server: LiveServer, run_cli: Any, tmp_path: Path
) -> None:
    await setup_table(live_server)
    first = last_token(ok(await run_cli("ingest", "events", str(write_ndjson(tmp_path / "a.ndjson", rows(2))),
                                        server=live_server)))
    old = json.loads(ok(await run_cli("sql", "SELECT count(*) FROM events", "--wait-token", str(first), "-f", "json",
                                      server=live_server)).stdout)
    second = last_token(ok(await run_cli("ingest", "events",
                                         str(write_ndjson(tmp_path / "b.ndjson", rows(5, start=2))),
                                         server=live_server)))
    assert await count(run_cli, live_server, second) == 7
    by_id = ok(await run_cli("sql", "SELECT count(*) FROM events", "--snapshot", str(old["snapshot_id"]), "-f",
                             "json", server=live_server))
    assert json.loads(by_id.stdout)["rows"] == [[2]]
    by_time = ok(await run_cli("sql", "SELECT count(*) FROM events", "--at", old["snapshot_time"], "-f", "json",
                               server=live_server))
    assert json.loads(by_time.stdout)["rows"] == [[2]]
    preview = json.loads(ok(await run_cli("remote", "restore", str(old["snapshot_id"]), "--dry-run",
                                          server=live_server)).stdout)
    (events,) = preview["tables"]
    assert (events["table_name"], events["changed"], events["rows_now"], events["rows_after"]) == ("events", True, 7, 2)
    assert await count(run_cli, live_server, second) == 7, "a dry run changes nothing"


async def test_sql_errors_print_the_servers_code_and_message_and_no_traceback(
    live_server: LiveServer, run_cli: Any
) -> None:
    one_error_line(await run_cli("sql", "SELEC 1", server=live_server), "QUERY_INVALID")
    one_error_line(await run_cli("sql", "SELECT 1", "--snapshot", "999999", server=live_server), "SNAPSHOT_NOT_FOUND")
    one_error_line(await run_cli("sql", "SELECT 1", "--wait-token", "999999", server=live_server),
                   "VISIBILITY_TOKEN_INVALID")
    no_key = await run_cli("sql", "SELECT 1", env={"DUCKMESH_SERVER": live_server.url})
    one_error_line(no_key, "UNAUTHORIZED")


async def test_an_unreachable_server_is_one_clear_line(run_cli: Any) -> None:
    from tests.conftest import free_port

    result = await run_cli("tables", env={"DUCKMESH_SERVER": f"http://127.0.0.1:{free_port()}",
                                          "DUCKMESH_API_KEY": "dm_x"})
    one_error_line(result, "SERVER_UNREACHABLE")


async def test_tables_describe_and_snapshots_show_the_catalog(
    live_server: LiveServer, run_cli: Any, tmp_path: Path
) -> None:
    await setup_table(live_server, primary_key=["id"])
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        altered = await http.patch("/v1/tables/events", headers=live_server.headers,
                                   json={"columns": [*KEYED, {"name": "note", "type": "string"}]})
        assert altered.status_code == 200, altered.text
    token = last_token(ok(await run_cli("ingest", "events", str(write_ndjson(tmp_path / "e.ndjson", rows(4))),
                                        "--op", "upsert", server=live_server)))
    await count(run_cli, live_server, token)
    listed = json.loads(ok(await run_cli("tables", "--json", server=live_server)).stdout)
    assert [(t["table_name"], t["schema_version"], t["stats"]["rows"]) for t in listed] == [("events", 2, 4)]
    assert "events" in ok(await run_cli("tables", server=live_server)).stdout
    described = ok(await run_cli("describe", "events", server=live_server)).stdout
    assert "schema version 2" in described and "primary key" in described and "note string" in described
    history = json.loads(ok(await run_cli("describe", "events", "--json", server=live_server)).stdout)
    assert [v["schema_version"] for v in history["schemas"]["schemas"]] == [1, 2]
    snaps = json.loads(ok(await run_cli("snapshots", "--json", server=live_server)).stdout)
    assert snaps["snapshots"][0]["max_visibility_token"] >= token
    assert "ingest" in ok(await run_cli("snapshots", server=live_server)).stdout
    one_error_line(await run_cli("describe", "nope", server=live_server), "TABLE_NOT_FOUND")


async def test_lag_once_and_dead_letters_answer_for_the_keys_tenant(live_server: LiveServer, run_cli: Any) -> None:
    lag = json.loads(ok(await run_cli("lag", "--json", server=live_server)).stdout)
    assert {"pending_events", "token_lag", "latest_visibility_token"} <= set(lag)
    assert "token lag" in ok(await run_cli("lag", "--once", server=live_server)).stdout
    letters = json.loads(ok(await run_cli("dead-letters", "--json", server=live_server)).stdout)
    assert letters["dead_letters"] == []
    assert "no dead letters" in ok(await run_cli("dead-letters", server=live_server)).stdout


async def test_remote_maintenance_runs_on_the_server(live_server: LiveServer, run_cli: Any) -> None:
    await setup_table(live_server)
    compaction = json.loads(ok(await run_cli("remote", "compaction", "--dry-run", server=live_server)).stdout)
    assert compaction["status"] == "completed" and compaction["summary"]["dry_run"] is True
    retention = json.loads(ok(await run_cli("remote", "retention", "--dry-run", server=live_server)).stdout)
    assert retention["status"] == "completed"
    integrity = json.loads(ok(await run_cli("remote", "integrity", "--deep", server=live_server)).stdout)
    assert integrity["summary"]["bad_files"] == []


async def test_a_profile_supplies_server_and_key_and_flags_override_the_environment(
    live_server: LiveServer, run_cli: Any, tmp_path: Path
) -> None:
    ok(await run_cli("profile", "add", "local", "--server", live_server.url, "--key", live_server.key, "--default"))
    config = tmp_path / "config" / "duckmesh" / "config.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    listed = ok(await run_cli("profile", "list"))
    assert "local" in listed.stdout and live_server.key not in listed.stdout
    assert "events" not in ok(await run_cli("tables")).stdout  # default profile: no flags, no environment
    ok(await run_cli("tables", "--profile", "local"))
    wrong_env = {"DUCKMESH_SERVER": live_server.url, "DUCKMESH_API_KEY": "dm_wrong"}
    one_error_line(await run_cli("tables", env=wrong_env), "UNAUTHORIZED")
    ok(await run_cli("tables", "--key", live_server.key, env=wrong_env))
    one_error_line(await run_cli("tables", "--profile", "missing"), "CLIENT_CONFIG_INVALID")


async def test_help_says_which_commands_need_a_server_and_which_the_catalog(run_cli: Any) -> None:
    text = ok(await run_cli("--help")).stdout
    assert "Client: needs a server and a key" in text and "Catalog admin: needs the catalog database" in text
    client_panel = text.split("Client: needs a server")[1].split("Catalog admin")[0]
    for command in ("sql", "ingest", "tables", "describe", "snapshots", "lag", "dead-letters", "remote"):
        assert f" {command} " in client_panel, command


async def test_remote_key_commands_create_list_and_revoke_keys_of_the_servers_tenant(
    live_server: LiveServer, run_cli: Any
) -> None:
    created = json.loads(ok(await run_cli("remote", "key-create", "--role", "query_reader", server=live_server)).stdout)
    assert created["roles"] == ["query_reader"] and created["key"].startswith("dm_")
    listed = json.loads(ok(await run_cli("remote", "key-list", server=live_server)).stdout)["keys"]
    assert created["key_id"] in {k["key_id"] for k in listed} and all("key" not in k for k in listed)
    revoked = json.loads(ok(await run_cli("remote", "key-revoke", created["key_id"], server=live_server)).stdout)
    assert revoked["revoked_at"]


async def test_schema_and_ask_use_the_schema_overview_and_query_assist(
    live_server: LiveServer, run_cli: Any, tmp_path: Path, app_context: AppContext
) -> None:
    await setup_table(live_server, primary_key=["id"])
    token = last_token(ok(await run_cli("ingest", "events", str(write_ndjson(tmp_path / "e.ndjson", rows(3))),
                                        "--op", "upsert", server=live_server)))
    await count(run_cli, live_server, token)
    overview = json.loads(ok(await run_cli("schema", "--samples", "2", "--json", server=live_server)).stdout)
    (table,) = overview["tables"]
    assert (table["table_name"], table["primary_key"], table["row_count"], len(table["sample_rows"])) == \
        ("events", ["id"], 3, 2)
    assert overview["translate_enabled"] is False
    shown = ok(await run_cli("schema", server=live_server)).stdout
    assert "events" in shown and "id int64 (key)" in shown and "rows 3" in shown
    one_error_line(await run_cli("ask", "how many?", server=live_server), "TRANSLATE_NOT_CONFIGURED")

    with running_fake_openai() as fake:
        app_context.assist = build_query_assist(make_settings(
            ai_translate_enabled=True, ai_base_url=fake.url, ai_model="fake-model", ai_timeout="5s"))
        fake.answer("SELECT count(*) AS n FROM events")
        answered = ok(await run_cli("ask", "how many events?", "--run", server=live_server)).stdout
        assert "SELECT count(*) AS n FROM events" in answered and "accepted by the sandbox" in answered
        assert "│ 3 │" in answered or " 3 " in answered, answered
        fake.answer("SELECT * FROM read_csv('/etc/passwd')")
        refused = await run_cli("ask", "show me the password file", "--run", server=live_server)
        assert refused.returncode == 1 and "refused by the sandbox (SQL_NOT_ALLOWED)" in refused.stdout
        assert "not run" in refused.stderr
        # a failing model endpoint is reported once: the client does not pay for the call again
        fake.status = 500
        sent = len(fake.requests)
        one_error_line(await run_cli("ask", "how many events?", server=live_server), "TRANSLATE_FAILED")
        assert len(fake.requests) == sent + 1
