-- DuckMesh catalog, version 1: the whole logical catalog of DATA_MODEL.md.

CREATE TABLE tenant (
    tenant_id           bigserial PRIMARY KEY,
    name                text NOT NULL UNIQUE,
    status              text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    max_pending_events  bigint,
    ingest_rate_limit   integer,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- Token allocation: the accepting transaction locks this row, so tokens are gap-free and
-- commit-ordered per tenant. Kept apart from tenant_head so ingest and publication never
-- wait on each other's row lock.
CREATE TABLE tenant_counter (
    tenant_id              bigint PRIMARY KEY REFERENCES tenant ON DELETE CASCADE,
    next_visibility_token  bigint NOT NULL DEFAULT 1 CHECK (next_visibility_token >= 1)
);

-- Publication lock and the tenant's current head: every snapshot publication of a tenant
-- locks this row first, which serializes publication and keeps watermarks monotonic.
CREATE TABLE tenant_head (
    tenant_id             bigint PRIMARY KEY REFERENCES tenant ON DELETE CASCADE,
    head_snapshot_id      bigint,
    max_visibility_token  bigint NOT NULL DEFAULT 0,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_key (
    key_id        text PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenant ON DELETE CASCADE,
    key_hash      bytea NOT NULL,
    roles         text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_key_tenant ON api_key (tenant_id);

CREATE TABLE table_def (
    table_id            bigserial PRIMARY KEY,
    tenant_id           bigint NOT NULL REFERENCES tenant ON DELETE CASCADE,
    table_name          text NOT NULL,
    primary_key         text[] NOT NULL DEFAULT '{}',
    partition_by        text[] NOT NULL DEFAULT '{}',
    schema_version      integer NOT NULL DEFAULT 1,
    compatibility_mode  text NOT NULL DEFAULT 'backward'
                        CHECK (compatibility_mode IN ('backward', 'forward', 'full', 'none')),
    retention_days      integer,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    dropped_at          timestamptz
);
CREATE UNIQUE INDEX table_def_live_name ON table_def (tenant_id, table_name) WHERE dropped_at IS NULL;

CREATE TABLE table_schema_version (
    table_id            bigint NOT NULL REFERENCES table_def ON DELETE CASCADE,
    schema_version      integer NOT NULL,
    schema_json         jsonb NOT NULL,
    compatibility_mode  text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_id, schema_version)
);

-- The PostgreSQL ingest bus.
CREATE TABLE ingest_event (
    event_id          bigserial PRIMARY KEY,
    tenant_id         bigint NOT NULL,
    table_id          bigint NOT NULL,
    idempotency_key   text NOT NULL,
    op                text NOT NULL CHECK (op IN ('insert', 'upsert', 'delete')),
    payload           json,
    payload_hash      bytea NOT NULL,
    payload_bytes     integer NOT NULL DEFAULT 0,
    schema_version    integer NOT NULL,
    event_time        timestamptz NOT NULL,
    ingested_at       timestamptz NOT NULL DEFAULT now(),
    visibility_token  bigint NOT NULL,
    state             text NOT NULL DEFAULT 'accepted'
                      CHECK (state IN ('accepted', 'claimed', 'committed', 'failed')),
    lease_owner       text,
    lease_until       timestamptz,
    claim_id          bigint,
    attempts          integer NOT NULL DEFAULT 0,
    failure_reason    text,
    trace_id          text,
    resolved_at       timestamptz,
    snapshot_id       bigint
);
CREATE UNIQUE INDEX ingest_event_idempotency ON ingest_event (tenant_id, table_id, idempotency_key);
CREATE UNIQUE INDEX ingest_event_token ON ingest_event (tenant_id, visibility_token);
CREATE INDEX ingest_event_claim_path ON ingest_event (state, lease_until);
CREATE INDEX ingest_event_ready ON ingest_event (event_id) WHERE state = 'accepted';
CREATE INDEX ingest_event_unresolved ON ingest_event (tenant_id, table_id, visibility_token)
    WHERE state IN ('accepted', 'claimed');
CREATE INDEX ingest_event_committed_age ON ingest_event (resolved_at) WHERE state = 'committed';
CREATE INDEX ingest_event_claim ON ingest_event (claim_id) WHERE claim_id IS NOT NULL;

CREATE TABLE ingest_claim_batch (
    claim_id     bigserial PRIMARY KEY,
    owner        text NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    lease_until  timestamptz NOT NULL,
    event_count  integer NOT NULL,
    byte_count   bigint NOT NULL,
    state        text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'acked', 'released'))
);

-- The items of a claim are the events that carry its claim_id; a view keeps the contract's
-- name without writing a second row per event on the hot path.
CREATE VIEW ingest_claim_item AS
    SELECT claim_id, event_id, tenant_id, table_id, visibility_token FROM ingest_event WHERE claim_id IS NOT NULL;

CREATE TABLE snapshot (
    snapshot_id           bigserial PRIMARY KEY,
    tenant_id             bigint NOT NULL REFERENCES tenant ON DELETE CASCADE,
    parent_snapshot_id    bigint,
    kind                  text NOT NULL CHECK (kind IN ('ingest', 'compaction', 'restore', 'backfill', 'drop')),
    created_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by            text NOT NULL,
    max_visibility_token  bigint NOT NULL,
    trace_id              text,
    expired_at            timestamptz
);
CREATE INDEX snapshot_tenant_desc ON snapshot (tenant_id, snapshot_id DESC);
CREATE INDEX snapshot_tenant_time ON snapshot (tenant_id, created_at);

CREATE TABLE snapshot_table_watermark (
    snapshot_id           bigint NOT NULL REFERENCES snapshot ON DELETE CASCADE,
    table_id              bigint NOT NULL,
    max_visibility_token  bigint NOT NULL,
    PRIMARY KEY (snapshot_id, table_id)
);

CREATE TABLE data_file (
    file_id          bigserial PRIMARY KEY,
    tenant_id        bigint NOT NULL,
    table_id         bigint NOT NULL,
    path             text NOT NULL UNIQUE,
    format           text NOT NULL DEFAULT 'parquet',
    record_count     bigint NOT NULL,
    file_size_bytes  bigint NOT NULL,
    content_hash     text NOT NULL,
    min_token        bigint,
    max_token        bigint,
    min_event_time   timestamptz,
    max_event_time   timestamptz,
    stats_json       jsonb,
    schema_version   integer NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX data_file_table ON data_file (tenant_id, table_id);

-- The change set of each snapshot.
CREATE TABLE snapshot_file (
    snapshot_id  bigint NOT NULL REFERENCES snapshot ON DELETE CASCADE,
    table_id     bigint NOT NULL,
    file_id      bigint NOT NULL,
    change_type  text NOT NULL CHECK (change_type IN ('add', 'remove')),
    PRIMARY KEY (snapshot_id, file_id, change_type)
);
CREATE INDEX snapshot_file_file ON snapshot_file (file_id);

-- Live-set index: one row per stretch of snapshots in which a file is live. The live set of
-- snapshot S is every range with added <= S < coalesce(removed, infinity). Snapshot ids grow
-- monotonically per tenant, so the answer for a given S never changes.
CREATE TABLE file_live_range (
    tenant_id            bigint NOT NULL,
    table_id             bigint NOT NULL,
    file_id              bigint NOT NULL REFERENCES data_file ON DELETE CASCADE,
    added_snapshot_id    bigint NOT NULL,
    removed_snapshot_id  bigint,
    PRIMARY KEY (file_id, added_snapshot_id)
);
CREATE INDEX file_live_range_current ON file_live_range (tenant_id, table_id) WHERE removed_snapshot_id IS NULL;
CREATE INDEX file_live_range_added ON file_live_range (tenant_id, added_snapshot_id);
CREATE INDEX file_live_range_removed ON file_live_range (tenant_id, removed_snapshot_id);

CREATE TABLE snapshot_pin (
    snapshot_id  bigint PRIMARY KEY REFERENCES snapshot ON DELETE CASCADE,
    tenant_id    bigint NOT NULL,
    reason       text NOT NULL,
    created_by   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz
);

-- Short leases queries hold on the snapshot they read; GC honours them.
CREATE TABLE snapshot_lease (
    lease_id     bigserial PRIMARY KEY,
    tenant_id    bigint NOT NULL,
    snapshot_id  bigint NOT NULL,
    owner        text NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX snapshot_lease_snapshot ON snapshot_lease (tenant_id, snapshot_id);

-- Per-table maintenance job leases (compaction, retention...).
CREATE TABLE job_lease (
    tenant_id    bigint NOT NULL,
    table_id     bigint NOT NULL,
    job          text NOT NULL,
    owner        text NOT NULL,
    lease_until  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, table_id, job)
);

CREATE TABLE compaction_run (
    run_id       bigserial PRIMARY KEY,
    tenant_id    bigint NOT NULL,
    table_id     bigint,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    status       text NOT NULL,
    dry_run      boolean NOT NULL DEFAULT false,
    created_by   text,
    summary      jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE gc_run (
    run_id       bigserial PRIMARY KEY,
    tenant_id    bigint NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    status       text NOT NULL,
    dry_run      boolean NOT NULL DEFAULT false,
    created_by   text,
    summary      jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE integrity_run (
    run_id       bigserial PRIMARY KEY,
    tenant_id    bigint NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    status       text NOT NULL,
    deep         boolean NOT NULL DEFAULT false,
    created_by   text,
    summary      jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE query_audit (
    audit_id      bigserial PRIMARY KEY,
    tenant_id     bigint NOT NULL,
    key_id        text,
    sql_hash      text NOT NULL,
    snapshot_id   bigint,
    duration_ms   double precision,
    row_count     bigint,
    status        text NOT NULL,
    error_code    text,
    trace_id      text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX query_audit_tenant ON query_audit (tenant_id, created_at);

CREATE TABLE admin_audit (
    audit_id     bigserial PRIMARY KEY,
    tenant_id    bigint,
    actor        text NOT NULL,
    action       text NOT NULL,
    object_type  text NOT NULL,
    object_id    text,
    details      jsonb NOT NULL DEFAULT '{}',
    trace_id     text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_audit_tenant ON admin_audit (tenant_id, created_at);
