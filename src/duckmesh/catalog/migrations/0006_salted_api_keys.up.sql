-- API keys: a per-key salt (stored hash = sha256(salt || sha256(key))), an optional expiry, and key
-- ids that never derive from the key (operator-chosen keys used to be found by a hash prefix).
ALTER TABLE api_key ADD COLUMN key_salt bytea;
ALTER TABLE api_key ADD COLUMN expires_at timestamptz;
ALTER TABLE api_key ADD COLUMN key_format text NOT NULL DEFAULT 'generated'
    CHECK (key_format IN ('generated', 'operator'));
-- Existing rows hold sha256(key): salting that digest gives exactly the new scheme, no key changes.
UPDATE api_key SET key_salt = uuid_send(gen_random_uuid());
UPDATE api_key SET key_hash = sha256(key_salt || key_hash);
UPDATE api_key SET key_format = 'operator', key_id = 'op' || substr(md5(gen_random_uuid()::text), 1, 14)
    WHERE key_id LIKE 'h%';
ALTER TABLE api_key ALTER COLUMN key_salt SET NOT NULL;
CREATE INDEX api_key_operator ON api_key (tenant_id) WHERE key_format = 'operator';
