DROP TABLE IF EXISTS token_reservation;
DROP INDEX IF EXISTS ingest_event_dead_letters;
ALTER TABLE ingest_event DROP COLUMN IF EXISTS replayed_at, DROP COLUMN IF EXISTS replay_token;
