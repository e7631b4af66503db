-- added: the seal of each artifact (HMAC-SHA-256 keyed by the host's secret
-- over its digest and bytes). A replica checks it before it runs what it
-- fetched; rows without one are rebuilt and replaced.
ALTER TABLE meta.artifacts ADD COLUMN seal BYTEA;
