-- The salted hashes cannot be turned back into sha256(key): after this, every API key is invalid
-- and new ones must be created (duckmesh key create). Operator keys keep their random ids.
DROP INDEX IF EXISTS api_key_operator;
ALTER TABLE api_key DROP COLUMN IF EXISTS key_format;
ALTER TABLE api_key DROP COLUMN IF EXISTS expires_at;
ALTER TABLE api_key DROP COLUMN IF EXISTS key_salt;
