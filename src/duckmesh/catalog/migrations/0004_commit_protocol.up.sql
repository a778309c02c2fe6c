-- The commit protocol (ADR 0005): write intents, snapshots that pin every table's schema version,
-- stable column field ids, replays that keep their original version order, bus cleanup indexes.

-- A writer records the object key it is about to put before putting it, and keeps the intent
-- alive while it works. Only a commit that still holds an unexpired intent may publish the path;
-- orphan cleanup deletes an unknown object only once its intent has expired (or it never had one
-- and is older than the safety age), so no live writer can publish a file GC already deleted.
CREATE TABLE write_intent (
    path        text PRIMARY KEY,
    tenant_id   bigint NOT NULL,
    owner       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX write_intent_owner ON write_intent (owner);

-- Every snapshot pins, per live table, the schema version its queries see.
ALTER TABLE snapshot_table_watermark ADD COLUMN schema_version integer;
UPDATE snapshot_table_watermark w SET schema_version = (
    SELECT v.schema_version FROM table_schema_version v JOIN snapshot s ON s.snapshot_id = w.snapshot_id
    WHERE v.table_id = w.table_id AND (v.created_at <= s.created_at OR v.schema_version = 1)
    ORDER BY v.schema_version DESC LIMIT 1);
-- Tables that existed when a snapshot was made but had no watermark row (compaction and restore
-- snapshots copied only their parent's rows): pin them too, at the snapshot's watermark.
INSERT INTO snapshot_table_watermark (snapshot_id, table_id, max_visibility_token, schema_version)
SELECT s.snapshot_id, t.table_id, s.max_visibility_token, v.schema_version
FROM snapshot s
JOIN table_def t ON t.tenant_id = s.tenant_id AND t.created_at <= s.created_at
     AND (t.dropped_at IS NULL OR t.dropped_at > s.created_at)
JOIN LATERAL (SELECT schema_version FROM table_schema_version v WHERE v.table_id = t.table_id
     AND (v.created_at <= s.created_at OR v.schema_version = 1) ORDER BY schema_version DESC LIMIT 1) v ON true
WHERE NOT EXISTS (SELECT 1 FROM snapshot_table_watermark w WHERE w.snapshot_id = s.snapshot_id
                  AND w.table_id = t.table_id);
UPDATE snapshot_table_watermark SET schema_version = 1 WHERE schema_version IS NULL;
ALTER TABLE snapshot_table_watermark ALTER COLUMN schema_version SET NOT NULL;

-- Table creation and schema changes publish a snapshot of their own.
ALTER TABLE snapshot DROP CONSTRAINT snapshot_kind_check;
ALTER TABLE snapshot ADD CONSTRAINT snapshot_kind_check
    CHECK (kind IN ('ingest', 'compaction', 'restore', 'backfill', 'drop', 'schema'));

-- Stable field ids: a column keeps its id across versions; a dropped and re-added name gets a new
-- one, so old files never lend their values to a new column of the same name. Existing tables:
-- one id per name, in order of first appearance.
WITH cols AS (
    SELECT v.table_id, c->>'name' AS name, min(v.schema_version * 100000 + e.ord) AS first_seen
    FROM table_schema_version v, jsonb_array_elements(v.schema_json->'columns') WITH ORDINALITY AS e(c, ord)
    GROUP BY 1, 2
), ids AS (
    SELECT table_id, name, row_number() OVER (PARTITION BY table_id ORDER BY first_seen) AS field_id FROM cols
)
UPDATE table_schema_version v SET schema_json = jsonb_set(v.schema_json, '{columns}', (
    SELECT jsonb_agg(e.c || jsonb_build_object('field_id', i.field_id) ORDER BY e.ord)
    FROM jsonb_array_elements(v.schema_json->'columns') WITH ORDINALITY AS e(c, ord)
    JOIN ids i ON i.table_id = v.table_id AND i.name = e.c->>'name'));

-- A replayed dead letter keeps its original token as its version (the order of a key's versions)
-- while a new visibility token tracks when it becomes visible.
ALTER TABLE ingest_event ADD COLUMN version_token bigint;

-- Bus cleanup: finished claims, replayed and expired dead letters, resolved reservations.
CREATE INDEX ingest_claim_batch_finished ON ingest_claim_batch (claimed_at) WHERE state <> 'active';
CREATE INDEX token_reservation_resolved ON token_reservation (resolved_at) WHERE state <> 'pending';

-- Queries read the tables a snapshot pins. A tenant whose head does not pin every live table
-- (tables created after its last snapshot) gets a new schema snapshot that does; file live ranges
-- are by snapshot id, so the new snapshot has its parent's file set.
WITH missing AS (
    SELECT h.tenant_id, h.head_snapshot_id, h.max_visibility_token FROM tenant_head h
    WHERE EXISTS (SELECT 1 FROM table_def t WHERE t.tenant_id = h.tenant_id AND t.dropped_at IS NULL
                  AND NOT EXISTS (SELECT 1 FROM snapshot_table_watermark w
                                  WHERE w.snapshot_id = h.head_snapshot_id AND w.table_id = t.table_id))
), made AS (
    INSERT INTO snapshot (tenant_id, parent_snapshot_id, kind, created_by, max_visibility_token)
    SELECT tenant_id, head_snapshot_id, 'schema', 'migration-0004', max_visibility_token FROM missing
    RETURNING snapshot_id, tenant_id, parent_snapshot_id, max_visibility_token
), pinned AS (
    INSERT INTO snapshot_table_watermark (snapshot_id, table_id, max_visibility_token, schema_version)
    SELECT m.snapshot_id, t.table_id, greatest(coalesce(p.max_visibility_token, 0), m.max_visibility_token),
           t.schema_version
    FROM made m JOIN table_def t ON t.tenant_id = m.tenant_id AND t.dropped_at IS NULL
    LEFT JOIN snapshot_table_watermark p ON p.snapshot_id = m.parent_snapshot_id AND p.table_id = t.table_id
)
UPDATE tenant_head h SET head_snapshot_id = m.snapshot_id, updated_at = now() FROM made m
WHERE h.tenant_id = m.tenant_id;
