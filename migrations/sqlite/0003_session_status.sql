-- Session records tell whether a session may still run: `active`, or
-- `ended` once a session that is not retained has run (it is never read
-- back as live again). Records are read when the live store does not know
-- a session, e.g. after the host restarted.
ALTER TABLE sessions ADD COLUMN status TEXT NOT NULL DEFAULT 'active'
    CHECK (status IN ('active', 'ended'));
