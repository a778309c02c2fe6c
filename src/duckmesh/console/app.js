// DuckMesh web console: plain JS, no build step, no CDN. Talks to the API with the key the user
// pasted, kept in sessionStorage (this tab only).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "duckmesh.key";
const state = { tables: [], snapshots: [], lastLag: null, lagTimer: null, isOps: false };

// --- API ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(body, status) {
    super(body.message || `HTTP ${status}`);
    this.code = body.error_code || `HTTP_${status}`;
    this.status = status;
    this.context = body.context || {};
    this.traceId = body.trace_id || null;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError({ error_code: "SERVER_UNREACHABLE", message: String(err) }, 0);
  }
  const text = await response.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = { message: text.slice(0, 200) }; }
  if (!response.ok) throw new ApiError(parsed || {}, response.status);
  return parsed;
}

function showError(el, err) {
  if (!err) { el.classList.add("hidden"); el.textContent = ""; return; }
  el.innerHTML = "";
  const code = document.createElement("b");
  code.textContent = err.code || "ERROR";
  el.append(code, document.createTextNode(`: ${err.message}`));
  const details = err.context && Object.keys(err.context).length ? `\n${JSON.stringify(err.context, null, 1)}` : "";
  if (details) el.append(document.createTextNode(details));
  if (err.traceId) el.append(document.createTextNode(`\ntrace id ${err.traceId}`));
  el.classList.remove("hidden");
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value; else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function cell(value) {
  if (value === null || value === undefined) return el("td", { class: "null" }, "NULL");
  return el("td", {}, typeof value === "object" ? JSON.stringify(value) : String(value));
}

function gridOf(columns, rows) {
  const head = el("tr", {}, ...columns.map((c) => el("th", {}, c.name, el("small", {}, c.type))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map(cell)))));
}

// --- login -------------------------------------------------------------------------------------

async function login(key) {
  sessionStorage.setItem(KEY, key);
  try {
    const listed = await api("GET", "/v1/tables");  // query_reader, table_admin or ops_admin
    state.tables = listed.tables;
    $("whoami").textContent = `tenant ${listed.tenant_id}`;
  } catch (err) {
    sessionStorage.removeItem(KEY);
    throw err;
  }
  // The schema overview (no sample rows) feeds completion and says whether query assist is on;
  // a key without query_reader simply has neither.
  api("GET", "/v1/ui/schema?sample_rows=0").then((overview) => {
    state.tables = overview.tables;
    $("assist").classList.toggle("hidden", !overview.translate_enabled);
  }).catch(() => {});
  try { await api("GET", "/v1/lag"); state.isOps = true; } catch { state.isOps = false; }
  document.querySelectorAll(".ops").forEach((n) => n.classList.toggle("hidden", !state.isOps));
  $("login").classList.add("hidden");
  $("app").classList.remove("hidden");
  $("logout").classList.remove("hidden");
  await loadSnapshots();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError($("login-error"), null);
  try { await login($("key").value.trim()); } catch (err) { showError($("login-error"), err); }
});

$("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY); location.reload(); });

// --- tabs --------------------------------------------------------------------------------------

const loaders = { tables: loadTables, snapshots: loadSnapshots, freshness: startFreshness, deadletters: loadDeadLetters };

document.querySelectorAll("nav button").forEach((button) => button.addEventListener("click", () => {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b === button));
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("hidden", t.id !== `tab-${button.dataset.tab}`));
  if (state.lagTimer) { clearInterval(state.lagTimer); state.lagTimer = null; }
  const load = loaders[button.dataset.tab];
  if (load) load();
}));

function openTab(name) { document.querySelector(`nav button[data-tab="${name}"]`).click(); }

// --- query -------------------------------------------------------------------------------------

async function runQuery() {
  showError($("query-error"), null);
  $("query-meta").textContent = "running…";
  const body = { sql: $("sql").value };
  if ($("asof").value) body.snapshot_id = Number($("asof").value);
  if ($("mintoken").value) body.min_visibility_token = Number($("mintoken").value);
  try {
    const answer = await api("POST", "/v1/query", body);
    $("result").replaceChildren(gridOf(answer.columns, answer.rows));
    const truncated = answer.truncated ? " (truncated)" : "";
    $("query-meta").textContent = `${answer.row_count} row(s)${truncated} · snapshot ${answer.snapshot_id} · ` +
      `token ${answer.max_visibility_token} · ${answer.stats.duration_ms.toFixed(1)} ms`;
  } catch (err) {
    $("query-meta").textContent = "";
    showError($("query-error"), err);
  }
}

$("run").addEventListener("click", runQuery);

// --- query assist: a question in plain words -> suggested SQL in the editor (never run by itself) ---

async function suggestSql() {
  showError($("query-error"), null);
  $("assist-meta").textContent = "asking…";
  try {
    const answer = await api("POST", "/v1/query/translate", { prompt: $("prompt").value });
    $("sql").value = answer.sql;
    const verdict = answer.sandbox_ok ? "the sandbox accepts it" : `the sandbox refuses it (${answer.sandbox_error_code})`;
    $("assist-meta").textContent = [`${answer.model}: ${verdict}`, ...answer.warnings].join(" · ");
  } catch (err) {
    $("assist-meta").textContent = "";
    showError($("query-error"), err);
  }
}

$("ask").addEventListener("click", suggestSql);
$("prompt").addEventListener("keydown", (event) => { if (event.key === "Enter") { event.preventDefault(); suggestSql(); } });

// --- completion: SQL keywords, the tenant's tables and their columns ------------------------------

const KEYWORDS = ["SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "LIMIT", "JOIN", "LEFT JOIN", "ON", "AS",
  "COUNT(*)", "SUM(", "AVG(", "MIN(", "MAX(", "DISTINCT", "HAVING", "WITH", "AND", "OR", "NOT", "IN", "date_trunc("];
let suggestions = [];
let selected = 0;

function candidates(prefix) {
  const lower = prefix.toLowerCase();
  const items = [];
  for (const table of state.tables) {
    items.push({ text: table.table_name, hint: "table" });
    for (const column of table.columns) items.push({ text: column.name, hint: `${table.table_name} · ${column.type}` });
  }
  for (const word of KEYWORDS) items.push({ text: word, hint: "keyword" });
  const seen = new Set();
  return items.filter((i) => i.text.toLowerCase().startsWith(lower) && i.text.toLowerCase() !== lower)
    .filter((i) => (seen.has(i.text + i.hint) ? false : seen.add(i.text + i.hint)))
    .slice(0, 30);
}

function currentWord() {
  const area = $("sql");
  const before = area.value.slice(0, area.selectionStart);
  const match = /[A-Za-z_][A-Za-z0-9_]*$/.exec(before);
  return match ? match[0] : "";
}

function renderCompletion() {
  const list = $("complete");
  if (!suggestions.length) { list.classList.add("hidden"); return; }
  list.replaceChildren(...suggestions.map((s, i) => el("li", { class: i === selected ? "sel" : "", role: "option",
    onmousedown: (e) => { e.preventDefault(); accept(i); } }, s.text, el("small", {}, s.hint))));
  list.classList.remove("hidden");
}

function accept(index) {
  const area = $("sql");
  const word = currentWord();
  const choice = suggestions[index].text;
  const start = area.selectionStart - word.length;
  area.value = area.value.slice(0, start) + choice + area.value.slice(area.selectionStart);
  area.selectionStart = area.selectionEnd = start + choice.length;
  suggestions = [];
  renderCompletion();
  area.focus();
}

$("sql").addEventListener("input", () => {
  const word = currentWord();
  suggestions = word.length >= 1 ? candidates(word) : [];
  selected = 0;
  renderCompletion();
});

$("sql").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); runQuery(); return; }
  if (!suggestions.length) return;
  if (event.key === "ArrowDown") { selected = (selected + 1) % suggestions.length; renderCompletion(); event.preventDefault(); }
  else if (event.key === "ArrowUp") { selected = (selected + suggestions.length - 1) % suggestions.length; renderCompletion(); event.preventDefault(); }
  else if (event.key === "Tab" || event.key === "Enter") { accept(selected); event.preventDefault(); }
  else if (event.key === "Escape") { suggestions = []; renderCompletion(); }
});

$("sql").addEventListener("blur", () => { suggestions = []; renderCompletion(); });

// --- tables ------------------------------------------------------------------------------------

async function loadTables() {
  try {
    state.tables = (await api("GET", "/v1/tables")).tables;
  } catch (err) { $("table-detail").replaceChildren(errorBox(err)); return; }
  $("table-list").replaceChildren(...state.tables.map((t) => el("li", { onclick: () => showTable(t.table_name) },
    t.table_name, el("small", { class: "muted" }, `  ${t.stats.logical_rows ?? t.stats.rows} rows`))));
  if (!state.tables.length) $("table-detail").replaceChildren(el("p", { class: "muted" }, "No tables yet."));
  else showTable(state.tables[0].table_name);
}

async function showTable(name) {
  document.querySelectorAll("#table-list li").forEach((li) => li.classList.toggle("active", li.firstChild.textContent === name));
  try {
    const [info, history] = await Promise.all([api("GET", `/v1/tables/${name}`), api("GET", `/v1/tables/${name}/schemas`)]);
    const keys = new Set(info.primary_key);
    const columns = gridOf([{ name: "column", type: "" }, { name: "type", type: "" }, { name: "nullable", type: "" }, { name: "key", type: "" }],
      info.columns.map((c) => [c.name, c.type, c.nullable ? "yes" : "no", keys.has(c.name) ? "primary key" : ""]));
    const versions = gridOf([{ name: "version", type: "" }, { name: "created", type: "" }, { name: "mode", type: "" }, { name: "columns", type: "" }],
      history.schemas.map((v) => [v.schema_version, v.created_at, v.compatibility_mode, v.columns.map((c) => `${c.name} ${c.type}`).join(", ")]));
    $("table-detail").replaceChildren(
      el("h3", {}, `${info.table_name} · schema version ${info.schema_version}`),
      el("p", { class: "muted" }, `${info.stats.logical_rows ?? "?"} rows (${info.stats.rows} stored) · ${info.stats.files} files · ${info.stats.bytes} bytes · compatibility ${info.compatibility_mode}`),
      columns, el("h4", {}, "Schema history"), versions);
  } catch (err) { $("table-detail").replaceChildren(errorBox(err)); }
}

function errorBox(err) { const box = el("div", { class: "error" }); showError(box, err); return box; }

// --- snapshots ---------------------------------------------------------------------------------

async function loadSnapshots() {
  try {
    state.snapshots = (await api("GET", "/v1/snapshots?limit=200")).snapshots;
  } catch (err) { $("timeline").replaceChildren(errorBox(err)); return; }
  const current = $("asof").value;
  $("asof").replaceChildren(el("option", { value: "" }, "latest snapshot"),
    ...state.snapshots.map((s) => el("option", { value: String(s.snapshot_id) }, `#${s.snapshot_id} ${s.kind} ${s.created_at}`)));
  $("asof").value = current;
  $("timeline").replaceChildren(...state.snapshots.map((s) => el("li", { class: `kind-${s.kind}`, "data-snapshot": s.snapshot_id },
    el("b", {}, `#${s.snapshot_id}`), el("span", { class: "when" }, s.created_at), el("span", {}, s.kind),
    el("span", { class: "muted" }, `token ${s.max_visibility_token}`),
    el("span", { class: "muted" }, Object.entries(s.tables).map(([n, t]) => `${n}: ${t.rows}`).join(", ")),
    el("button", { onclick: () => queryAsOf(s.snapshot_id) }, "Query as of"))));
}

function queryAsOf(snapshotId) {
  $("asof").value = String(snapshotId);
  openTab("query");
  runQuery();
}

// --- freshness ---------------------------------------------------------------------------------

function stat(label, value) { return el("div", { class: "stat" }, el("b", {}, value), label); }

async function refreshFreshness() {
  showError($("freshness-error"), null);
  let lag;
  try { lag = await api("GET", "/v1/lag"); } catch (err) { showError($("freshness-error"), err); return; }
  const now = Date.now();
  let rate = "…";
  if (state.lastLag) {
    const seconds = (now - state.lastLag.at) / 1000;
    rate = `${Math.max(0, Math.round((lag.latest_issued_token - state.lastLag.lag.latest_issued_token) / seconds))}/s`;
  }
  state.lastLag = { at: now, lag };
  const behind = lag.latest_snapshot_time ? `${((now - Date.parse(lag.latest_snapshot_time)) / 1000).toFixed(1)} s ago` : "never";
  $("freshness").replaceChildren(
    stat("ingest rate (tokens issued)", rate), stat("token lag (issued − visible)", lag.token_lag),
    stat("pending events", lag.pending_events), stat("write-to-visible now (oldest pending write)", `${((lag.oldest_pending_age_ms || 0) / 1000).toFixed(1)} s`),
    stat("latest visible token", lag.latest_visibility_token), stat("latest snapshot", `#${lag.latest_snapshot_id} (${behind})`),
    stat("failed events", lag.failed_events));
}

function startFreshness() {
  state.lastLag = null;
  refreshFreshness();
  state.lagTimer = setInterval(refreshFreshness, 2000);
}

// --- dead letters and maintenance ----------------------------------------------------------------

async function loadDeadLetters() {
  try {
    const found = await api("GET", "/v1/dead-letters?limit=200");
    if (!found.dead_letters.length) { $("deadletters").replaceChildren(el("p", { class: "muted" }, "No dead letters.")); return; }
    $("deadletters").replaceChildren(gridOf(
      ["event", "table", "key", "failed at", "reason"].map((name) => ({ name, type: "" })),
      found.dead_letters.map((d) => [d.event_id, d.table_name, d.idempotency_key, d.failed_at, d.failure_reason])));
  } catch (err) { $("deadletters").replaceChildren(errorBox(err)); }
}

document.querySelectorAll("button[data-run]").forEach((button) => button.addEventListener("click", async () => {
  showError($("maintenance-error"), null);
  $("maintenance-out").textContent = "running…";
  try {
    const job = button.dataset.run;
    const body = job === "integrity" ? { deep: false } : { dry_run: Boolean(button.dataset.dry) };
    const answer = await api("POST", `/v1/${job}/run`, body);
    $("maintenance-out").textContent = JSON.stringify(answer, null, 2);
  } catch (err) {
    $("maintenance-out").textContent = "";
    showError($("maintenance-error"), err);
  }
}));

// --- start -------------------------------------------------------------------------------------

if (sessionStorage.getItem(KEY)) login(sessionStorage.getItem(KEY)).catch((err) => showError($("login-error"), err));
