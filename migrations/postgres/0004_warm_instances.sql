-- Whether a function's instance may serve its caller's next execution of
-- the same version (a warm instance), and whether a session started with
-- that opt-in.
ALTER TABLE meta.functions ADD COLUMN warm_instances BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE meta.sessions ADD COLUMN warm_instances BOOLEAN NOT NULL DEFAULT FALSE;
