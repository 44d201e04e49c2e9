//! The tables, and the migrations that make them: applied at open, in
//! order, each in a transaction with the row that records it, so two
//! servers starting at once apply each one once (the second one's insert
//! of the same version conflicts, and it reads the schema again).
//!
//! Only SQL that CockroachDB also runs: no advisory locks, no triggers or
//! functions, no sequences; keys compare as bytes (`COLLATE "C"`), so that
//! listings page in the order the embedded store uses, whatever the
//! database's default collation.
//!
//! Records are the engine's encoding (`store::codec`: a format byte, then
//! JSON) in `BYTEA` columns; what a query selects or orders by is a column
//! of its own.

/// The schema this build writes and reads.
pub const VERSION: i32 = 3;

/// Partitions of a cluster created without saying how many.
pub const DEFAULT_PARTITIONS: u32 = 256;

pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE cluster (
    id INT PRIMARY KEY CHECK (id = 1),
    partitions INT NOT NULL CHECK (partitions > 0),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE workflows (
    id TEXT COLLATE "C" PRIMARY KEY,
    part INT NOT NULL,
    status TEXT NOT NULL,
    pack TEXT NOT NULL,
    finished_ms BIGINT,
    meta BYTEA NOT NULL
);
CREATE INDEX workflows_finished ON workflows (finished_ms, id) WHERE finished_ms IS NOT NULL;
CREATE TABLE facts (
    wf TEXT COLLATE "C" NOT NULL,
    id BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (wf, id)
);
CREATE TABLE waiting (
    wf TEXT COLLATE "C" NOT NULL,
    inv TEXT COLLATE "C" NOT NULL,
    part INT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (wf, inv)
);
CREATE INDEX waiting_part ON waiting (part);
CREATE TABLE attempts (
    inv TEXT COLLATE "C" PRIMARY KEY,
    part INT NOT NULL,
    body BYTEA NOT NULL
);
CREATE TABLE timeline (
    wf TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (wf, seq)
);
CREATE TABLE timers (
    wf TEXT COLLATE "C" NOT NULL,
    due_ms BIGINT NOT NULL,
    part INT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (wf, due_ms)
);
CREATE INDEX timers_part ON timers (part);
CREATE TABLE requests (
    key TEXT COLLATE "C" PRIMARY KEY,
    wf TEXT COLLATE "C" NOT NULL
);
CREATE TABLE packs (
    tenant TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (tenant, name, seq)
);
CREATE TABLE aux (
    kind TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    part INT,
    value BYTEA NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE partitions (
    id INT PRIMARY KEY,
    owner TEXT,
    epoch BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ
);
CREATE TABLE members (
    id TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);
"#,
    ),
    // The secret servers of a cluster show each other when one forwards a
    // turn to another (set at migration, from the migrating server's
    // randomness: whoever reads the database is trusted anyway).
    (2, "ALTER TABLE cluster ADD COLUMN secret TEXT"),
    // The list index (`stoa_engine::store::index`): columns of the
    // workflow's own row, so it is written by the same statement as the
    // meta, and B-tree indexes that page newest first by tenant, then by
    // status, waits, pack and version. Rows of an older build get their
    // values at open (`PgStore::fill_list_columns`).
    (
        3,
        r#"
ALTER TABLE workflows ADD COLUMN tenant TEXT COLLATE "C";
ALTER TABLE workflows ADD COLUMN created_ms BIGINT;
ALTER TABLE workflows ADD COLUMN version TEXT COLLATE "C";
ALTER TABLE workflows ADD COLUMN waits TEXT COLLATE "C";
CREATE INDEX workflows_list ON workflows (tenant, created_ms, id);
CREATE INDEX workflows_list_status ON workflows (tenant, status, created_ms, id);
CREATE INDEX workflows_list_waits ON workflows (tenant, waits, created_ms, id) WHERE waits IS NOT NULL;
CREATE INDEX workflows_list_pack ON workflows (tenant, pack, created_ms, id);
CREATE INDEX workflows_list_pack_status ON workflows (tenant, pack, status, created_ms, id);
CREATE INDEX workflows_list_version ON workflows (tenant, pack, version, created_ms, id);
"#,
    ),
];

/// The table that records applied migrations.
pub const SCHEMA_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS stoa_schema (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";
