-- The pgtrickle catalog: stream tables, what they read, and what their refreshes did.
-- State per stream table lives in columns that later features extend (ROADMAP.md).

CREATE SCHEMA IF NOT EXISTS pgtrickle;
CREATE SCHEMA IF NOT EXISTS pgtrickle_changes;

CREATE TABLE pgtrickle.stream_tables (
    id                      integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_name             text        NOT NULL,
    name                    text        NOT NULL,
    query                   text        NOT NULL,
    schedule                text        NOT NULL,
    refresh_mode            text        NOT NULL
        CHECK (refresh_mode IN ('full', 'differential', 'immediate', 'auto')),
    effective_refresh_mode  text        NOT NULL
        CHECK (effective_refresh_mode IN ('full', 'differential', 'immediate')),
    fallback_reason         text,
    plan                    jsonb       NOT NULL DEFAULT '{}',
    -- the snapshot the contents equal the query at; a buffered change is applied iff its
    -- transaction is visible in the new frontier and not in this one
    frontier                pg_snapshot,
    -- pg_current_wal_insert_lsn() read with the frontier: every change committed before it
    -- is reflected
    frontier_lsn            pg_lsn,
    status                  text        NOT NULL DEFAULT 'initializing'
        CHECK (status IN ('initializing', 'active', 'suspended', 'error')),
    last_error              text,
    consecutive_errors      integer     NOT NULL DEFAULT 0,
    last_refresh_at         timestamptz,
    data_timestamp          timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (schema_name, name)
);

-- A table whose changes are captured: its change buffer and its replica identity before
-- pgtrickle changed it.
CREATE TABLE pgtrickle.sources (
    source_oid              oid         PRIMARY KEY,
    schema_name             text        NOT NULL,
    name                    text        NOT NULL,
    buffer_table            text        NOT NULL,
    columns                 text[]      NOT NULL,
    column_types            text[]      NOT NULL,
    original_replica_identity "char"    NOT NULL,
    added_at                timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtrickle.dependencies (
    stream_table_id         integer     NOT NULL
        REFERENCES pgtrickle.stream_tables (id) ON DELETE CASCADE,
    source_oid              oid         NOT NULL REFERENCES pgtrickle.sources (source_oid),
    columns_read            text[]      NOT NULL,
    PRIMARY KEY (stream_table_id, source_oid)
);

CREATE TABLE pgtrickle.refresh_history (
    id                      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_table_id         integer     NOT NULL
        REFERENCES pgtrickle.stream_tables (id) ON DELETE CASCADE,
    action                  text        NOT NULL
        CHECK (action IN ('full', 'differential', 'no_data', 'initialize')),
    status                  text        NOT NULL CHECK (status IN ('ok', 'error')),
    started_at              timestamptz NOT NULL,
    finished_at             timestamptz NOT NULL,
    frontier_lsn            pg_lsn,
    delta_rows              bigint,
    rows_changed            bigint,
    snapshot_ms             double precision,
    wait_ms                 double precision,
    stage_ms                double precision,
    apply_ms                double precision,
    commit_ms               double precision,
    total_ms                double precision,
    error                   text
);
CREATE INDEX ON pgtrickle.refresh_history (stream_table_id, id DESC);

-- How far the reader has buffered: a transaction whose commit ends at or before
-- buffered_lsn is in the change buffers already and is skipped when the slot sends it again.
CREATE TABLE pgtrickle.reader_state (
    slot_name               text        PRIMARY KEY,
    buffered_lsn            pg_lsn      NOT NULL,
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW pgtrickle.status AS
SELECT st.schema_name, st.name, st.refresh_mode, st.effective_refresh_mode, st.schedule,
       st.status, st.last_refresh_at, st.data_timestamp,
       now() - st.data_timestamp AS staleness,
       st.frontier_lsn, st.consecutive_errors, st.last_error, st.fallback_reason
FROM pgtrickle.stream_tables st;
