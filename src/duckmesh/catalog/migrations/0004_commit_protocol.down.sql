DROP INDEX IF EXISTS token_reservation_resolved;
DROP INDEX IF EXISTS ingest_claim_batch_finished;
ALTER TABLE ingest_event DROP COLUMN IF EXISTS version_token;
UPDATE table_schema_version v SET schema_json = jsonb_set(v.schema_json, '{columns}', (
    SELECT jsonb_agg(e.c - 'field_id' ORDER BY e.ord)
    FROM jsonb_array_elements(v.schema_json->'columns') WITH ORDINALITY AS e(c, ord)));
-- Schema snapshots change no file and keep their parent's watermark, as compaction snapshots do.
UPDATE snapshot SET kind = 'compaction' WHERE kind = 'schema';
ALTER TABLE snapshot DROP CONSTRAINT snapshot_kind_check;
ALTER TABLE snapshot ADD CONSTRAINT snapshot_kind_check
    CHECK (kind IN ('ingest', 'compaction', 'restore', 'backfill', 'drop'));
ALTER TABLE snapshot_table_watermark DROP COLUMN IF EXISTS schema_version;
DROP TABLE IF EXISTS write_intent;
