-- The production registry, artifacts, session records and logs (PostgreSQL).
--
-- The tables and columns of the seed's schema are kept, in its `public` and
-- `meta` schemas, so queries written against the seed keep working; the
-- columns this host adds are marked "added".

CREATE SCHEMA IF NOT EXISTS meta;

-- The seed's record of applied schema versions (sqlx keeps its own in
-- _sqlx_migrations; this row tells seed tooling where the schema stands).
CREATE TABLE IF NOT EXISTS meta.schema_version (
    id          SERIAL PRIMARY KEY,
    version     VARCHAR(32) NOT NULL,
    description TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    applied_by  VARCHAR(128) NOT NULL
);
INSERT INTO meta.schema_version (version, description, applied_by)
VALUES ('2.0.0', 'lambda-host: WASI component registry, artifacts, sessions and logs', 'lambda-host');

CREATE TABLE meta.functions (
    id                UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    language          VARCHAR(32) NOT NULL,
    title             VARCHAR(64) NOT NULL,
    language_title    VARCHAR(128) NOT NULL UNIQUE,
    description       TEXT,
    schema_definition JSONB,
    examples          JSONB,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    -- The owner of a dynamic function (the token's subject).
    created_by        VARCHAR(128),
    is_active         BOOLEAN NOT NULL DEFAULT TRUE,
    version           VARCHAR(32) NOT NULL DEFAULT '1.0.0',
    tags              VARCHAR(64)[],
    -- added: predefined or dynamic, and the version that runs.
    kind              VARCHAR(16) NOT NULL CHECK (kind IN ('predefined', 'dynamic')),
    build_digest      CHAR(64) NOT NULL,
    component_digest  CHAR(64) NOT NULL,
    component_size    BIGINT NOT NULL,
    compile_options   JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX idx_functions_language ON meta.functions (language);
CREATE INDEX idx_functions_created_by ON meta.functions (created_by);
CREATE INDEX idx_functions_is_active ON meta.functions (is_active);

-- The source of dynamic functions.
CREATE TABLE meta.scripts (
    function_id UUID PRIMARY KEY REFERENCES meta.functions (id) ON DELETE CASCADE,
    content     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- added: built components by build digest, so a replica fetches what
-- another built instead of building it again.
CREATE TABLE meta.artifacts (
    digest     CHAR(64) PRIMARY KEY,
    bytes      BYTEA NOT NULL,
    size       BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- The durable record of each session (the live one is in Redis).
CREATE TABLE meta.sessions (
    request_id        VARCHAR(128) PRIMARY KEY,
    language_title    VARCHAR(128) NOT NULL,
    user_id           VARCHAR(128),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    expires_at        TIMESTAMPTZ NOT NULL,
    last_executed_at  TIMESTAMPTZ,
    execution_count   INTEGER NOT NULL DEFAULT 0,
    status            VARCHAR(32) NOT NULL DEFAULT 'active',
    context           JSONB,
    script_content    TEXT,
    script_hash       VARCHAR(64),
    compiled_artifact BYTEA,
    compile_options   JSONB,
    compile_status    VARCHAR(32),
    compile_error     TEXT,
    metadata          JSONB,
    -- added: the function version the session runs, and its settings.
    build_digest      CHAR(64),
    component_digest  CHAR(64),
    timeout_ms        BIGINT,
    retain_session    BOOLEAN
);
CREATE INDEX idx_sessions_expires_at ON meta.sessions (expires_at);
CREATE INDEX idx_sessions_language_title ON meta.sessions (language_title);
CREATE INDEX idx_sessions_user_id ON meta.sessions (user_id);

-- One row per served request.
CREATE TABLE public.request_logs (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    request_id       VARCHAR(64),
    -- The function the request was about; empty for other endpoints.
    language_title   VARCHAR(128) NOT NULL DEFAULT '',
    timestamp        TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    client_ip        VARCHAR(45),
    user_id          VARCHAR(128),
    request_headers  JSONB,
    request_payload  JSONB,
    response_payload JSONB,
    status_code      INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    cached           BOOLEAN NOT NULL DEFAULT FALSE,
    error_details    JSONB,
    runtime_metrics  JSONB,
    -- added: the route template and the method.
    endpoint         VARCHAR(128) NOT NULL DEFAULT '',
    method           VARCHAR(8) NOT NULL DEFAULT ''
);
CREATE INDEX idx_request_logs_timestamp ON public.request_logs (timestamp);
CREATE INDEX idx_request_logs_language_title ON public.request_logs (language_title);
CREATE INDEX idx_request_logs_status_code ON public.request_logs (status_code);
CREATE INDEX idx_request_logs_user_id ON public.request_logs (user_id);
CREATE INDEX idx_request_logs_request_id ON public.request_logs (request_id);
CREATE INDEX idx_request_logs_cached ON public.request_logs (cached);

-- One row per error answered, linked to its request.
CREATE TABLE public.error_logs (
    id             UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    request_log_id UUID NOT NULL REFERENCES public.request_logs (id),
    timestamp      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    error_code     VARCHAR(64) NOT NULL,
    error_message  TEXT NOT NULL,
    stack_trace    TEXT,
    context        JSONB
);
CREATE INDEX idx_error_logs_request_log_id ON public.error_logs (request_log_id);
CREATE INDEX idx_error_logs_error_code ON public.error_logs (error_code);
CREATE INDEX idx_error_logs_timestamp ON public.error_logs (timestamp);
