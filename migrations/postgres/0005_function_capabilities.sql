-- What an HTTP function declared it needs at initialize (hosts, key_value,
-- variables); NULL when it declared nothing. The operator's capability
-- policy is narrowed to it.
ALTER TABLE meta.functions ADD COLUMN capabilities JSONB;
