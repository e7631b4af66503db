-- Whether a function's instance may serve its caller's next execution of
-- the same version (a warm instance), and whether a session started with
-- that opt-in.
ALTER TABLE functions ADD COLUMN warm_instances INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN warm_instances INTEGER NOT NULL DEFAULT 0;
