-- Dead-letter replay bookkeeping and token reservations for backfills.

ALTER TABLE ingest_event ADD COLUMN replayed_at timestamptz, ADD COLUMN replay_token bigint;
CREATE INDEX ingest_event_dead_letters ON ingest_event (tenant_id, event_id) WHERE state = 'failed';

-- A backfill reserves a token range up front and publishes it later as one snapshot. Until then
-- the range counts as unresolved for the watermark; an abandoned reservation expires and is
-- failed (resolved), so a crashed backfill can never hold the watermark back forever.
CREATE TABLE token_reservation (
    reservation_id  bigserial PRIMARY KEY,
    tenant_id       bigint NOT NULL REFERENCES tenant ON DELETE CASCADE,
    table_id        bigint NOT NULL,
    backfill_id     text NOT NULL,
    payload_hash    bytea NOT NULL,
    min_token       bigint NOT NULL,
    max_token       bigint NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'committed', 'failed')),
    expires_at      timestamptz NOT NULL,
    snapshot_id     bigint,
    record_count    bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    UNIQUE (tenant_id, table_id, backfill_id)
);
CREATE INDEX token_reservation_pending ON token_reservation (tenant_id, table_id, min_token) WHERE state = 'pending';
