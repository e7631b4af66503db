-- What an HTTP function declared it needs at initialize (JSON: hosts,
-- key_value, variables); NULL when it declared nothing. The operator's
-- capability policy is narrowed to it.
ALTER TABLE functions ADD COLUMN capabilities TEXT;
