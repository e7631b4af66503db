-- The embedded registry and logs (SQLite). The PostgreSQL schema keeps the
-- same tables and columns in its `public`/`meta` schemas.

-- Functions: predefined (shipped in components/) and dynamic (registered
-- through initialize with script_content).
CREATE TABLE functions (
    language_title   TEXT PRIMARY KEY,
    language         TEXT NOT NULL,
    title            TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('predefined', 'dynamic')),
    owner            TEXT,
    description      TEXT NOT NULL DEFAULT '',
    script_content   TEXT,
    build_digest     TEXT NOT NULL,
    component_digest TEXT NOT NULL,
    component_size   INTEGER NOT NULL,
    compile_options  TEXT NOT NULL DEFAULT '{}',
    schema           TEXT NOT NULL DEFAULT '{}',
    examples         TEXT NOT NULL DEFAULT '[]',
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX functions_language ON functions (language);
CREATE INDEX functions_owner ON functions (owner);

-- One row per served request.
CREATE TABLE request_logs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id     TEXT,
    method         TEXT NOT NULL,
    endpoint       TEXT NOT NULL,
    status         INTEGER NOT NULL,
    duration_ms    REAL NOT NULL,
    user_id        TEXT,
    language_title TEXT,
    cached         INTEGER,
    client_ip      TEXT,
    created_at     TEXT NOT NULL
);
CREATE INDEX request_logs_request_id ON request_logs (request_id);
CREATE INDEX request_logs_created_at ON request_logs (created_at);

-- One row per error answered.
CREATE TABLE error_logs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT,
    endpoint   TEXT NOT NULL,
    code       TEXT NOT NULL,
    message    TEXT NOT NULL,
    details    TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);
CREATE INDEX error_logs_request_id ON error_logs (request_id);

-- The durable record of each session (the live session is in the session
-- store: memory or Redis).
CREATE TABLE sessions (
    request_id       TEXT PRIMARY KEY,
    language_title   TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    build_digest     TEXT NOT NULL,
    component_digest TEXT NOT NULL,
    context          TEXT NOT NULL,
    timeout_ms       INTEGER NOT NULL,
    retain_session   INTEGER NOT NULL,
    created_at       TEXT NOT NULL,
    expires_at       TEXT NOT NULL,
    execution_count  INTEGER NOT NULL,
    last_executed_at TEXT
);
