-- Links an error row to its request row, as the PostgreSQL schema does.
ALTER TABLE request_logs ADD COLUMN log_id TEXT;
ALTER TABLE error_logs ADD COLUMN request_log_id TEXT;
CREATE INDEX request_logs_log_id ON request_logs (log_id);
