-- The columnar segment bus (ADR 0008): one row per accepted request instead of one per event.
-- A segment holds the request's validated records as one Arrow IPC stream (zstd), its token range
-- and its table and schema version; idempotency keys live in a narrow keyed table; dead letters
-- are rows of their own (canonical JSON, for listing and replay).

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM ingest_event WHERE state IN ('accepted', 'claimed')) THEN
        RAISE EXCEPTION 'the ingest bus still holds unresolved events: let the coordinators of the previous'
            ' version drain it (GET /v1/lag shows 0 pending and claimed events), then migrate';
    END IF;
END $$;

CREATE TABLE ingest_segment (
    segment_id      bigserial PRIMARY KEY,
    tenant_id       bigint NOT NULL,
    table_id        bigint NOT NULL,
    schema_version  integer NOT NULL,
    min_token       bigint NOT NULL,
    max_token       bigint NOT NULL,
    min_version     bigint NOT NULL,   -- the lowest version any record carries (a replay keeps old ones)
    record_count    integer NOT NULL,
    byte_count      integer NOT NULL,
    data            bytea,             -- NULL once resolved
    state           text NOT NULL DEFAULT 'accepted'
                    CHECK (state IN ('accepted', 'claimed', 'committed', 'failed')),
    lease_owner     text,
    lease_until     timestamptz,
    liveness_key    bigint,            -- the claimant's liveness lock (catalog/liveness.py), if it holds one
    claim_id        bigint,
    attempts        integer NOT NULL DEFAULT 0,
    failure_reason  text,
    trace_id        text,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    snapshot_id     bigint
);
-- The blob is compressed by the writer: PostgreSQL should store it out of line as is.
ALTER TABLE ingest_segment ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE ingest_segment SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_limit = 2000,
                                autovacuum_analyze_scale_factor = 0.02);
CREATE INDEX ingest_segment_ready ON ingest_segment (segment_id) WHERE state = 'accepted';
CREATE INDEX ingest_segment_unresolved ON ingest_segment (tenant_id, table_id, min_token)
    WHERE state IN ('accepted', 'claimed');
CREATE INDEX ingest_segment_claim ON ingest_segment (claim_id) WHERE state = 'claimed';
CREATE INDEX ingest_segment_expired ON ingest_segment (lease_until) WHERE state = 'claimed';
CREATE INDEX ingest_segment_resolved ON ingest_segment (tenant_id, resolved_at) WHERE state IN ('committed', 'failed');
CREATE INDEX ingest_segment_tokens ON ingest_segment (tenant_id, max_token);

-- Per-record idempotency keys: key -> a 64-bit digest of the canonical record and its token.
-- A NULL digest (keys carried over from the per-event bus) matches any payload.
CREATE TABLE ingest_key (
    tenant_id        bigint NOT NULL,
    table_id         bigint NOT NULL,
    idempotency_key  text NOT NULL,
    payload_hash     bytea,
    token            bigint NOT NULL,
    PRIMARY KEY (tenant_id, table_id, idempotency_key)
);
CREATE INDEX ingest_key_token ON ingest_key (tenant_id, token);

-- Request-level idempotency (the Idempotency-Key header): one row per request.
CREATE TABLE ingest_request (
    tenant_id    bigint NOT NULL,
    table_id     bigint NOT NULL,
    request_key  text NOT NULL,
    body_hash    bytea NOT NULL,
    max_token    bigint NOT NULL,
    receipt      jsonb NOT NULL,
    PRIMARY KEY (tenant_id, table_id, request_key)
);
CREATE INDEX ingest_request_token ON ingest_request (tenant_id, max_token);

CREATE TABLE ingest_dead_letter (
    dead_letter_id    bigserial PRIMARY KEY,
    tenant_id         bigint NOT NULL,
    table_id          bigint NOT NULL,
    segment_id        bigint,
    visibility_token  bigint NOT NULL,
    version_token     bigint NOT NULL,
    idempotency_key   text,
    op                text NOT NULL,
    payload           json NOT NULL,
    schema_version    integer NOT NULL,
    event_time        timestamptz NOT NULL,
    attempts          integer NOT NULL DEFAULT 0,
    failure_reason    text NOT NULL,
    trace_id          text,
    failed_at         timestamptz NOT NULL DEFAULT now(),
    replayed_at       timestamptz,
    replay_token      bigint
);
CREATE INDEX ingest_dead_letter_open ON ingest_dead_letter (tenant_id, table_id, version_token)
    WHERE replayed_at IS NULL;
CREATE INDEX ingest_dead_letter_tokens ON ingest_dead_letter (tenant_id, visibility_token);

-- What the per-event bus knew: committed keys (payload digests are not comparable: NULL) and
-- unreplayed dead letters.
INSERT INTO ingest_key (tenant_id, table_id, idempotency_key, payload_hash, token)
SELECT tenant_id, table_id, idempotency_key, NULL, visibility_token FROM ingest_event
ON CONFLICT DO NOTHING;
INSERT INTO ingest_dead_letter (tenant_id, table_id, visibility_token, version_token, idempotency_key, op, payload,
                                schema_version, event_time, attempts, failure_reason, trace_id, failed_at)
SELECT tenant_id, table_id, visibility_token, coalesce(version_token, visibility_token), idempotency_key, op, payload,
       schema_version, event_time, attempts, coalesce(failure_reason, 'failed'), trace_id, coalesce(resolved_at, now())
FROM ingest_event WHERE state = 'failed' AND replayed_at IS NULL AND payload IS NOT NULL;

DROP VIEW ingest_claim_item;
DROP TABLE ingest_event;
