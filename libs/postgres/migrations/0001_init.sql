-- 0001_init: configuration, members, their ledgers, idempotency records, and the fence of
-- commits. Applied in one transaction by `loyalty migrate` (see src/migrate.rs).
--
-- Domain values (franchises, programs, stores, principals, member states, ledger entries,
-- idempotency records) are the serde_json documents of the domain types stored as `bytea`,
-- byte for byte what the embedded and ScyllaDB stores keep; the columns they are found by are
-- typed. Every text key uses the "C" collation: byte order, as the embedded store scans, and
-- the cheapest comparison.

CREATE TABLE franchises (
    id   text COLLATE "C" PRIMARY KEY,
    body bytea NOT NULL
);

-- Program versions are write-once (INSERT ... ON CONFLICT DO NOTHING; 0 rows: a conflict).
CREATE TABLE programs (
    franchise_id text COLLATE "C" NOT NULL,
    version      bigint NOT NULL CHECK (version >= 0),
    body         bytea NOT NULL,
    PRIMARY KEY (franchise_id, version)
);

CREATE TABLE stores (
    id           text COLLATE "C" PRIMARY KEY,
    franchise_id text COLLATE "C" NOT NULL,
    body         bytea NOT NULL
);

-- API keys by their hash only.
CREATE TABLE api_keys (
    key_hash text COLLATE "C" PRIMARY KEY,
    body     bytea NOT NULL
);

-- One row per enrolled member; `version` fences every write (UPDATE ... WHERE version = $n).
CREATE TABLE members (
    member_id    text COLLATE "C" PRIMARY KEY,
    franchise_id text COLLATE "C" NOT NULL,
    version      bigint NOT NULL,
    state        bytea NOT NULL
);

-- Ledger entries, read newest first by (member_id, seq DESC) on the primary key's index.
CREATE TABLE ledger (
    member_id text COLLATE "C" NOT NULL,
    seq       bigint NOT NULL,
    event_id  text COLLATE "C" NOT NULL,
    body      bytea NOT NULL,
    PRIMARY KEY (member_id, seq)
);

-- Idempotency records (outcomes of commands) by (franchise, event id); `member_id` is NULL for
-- events without a member (anonymous sales).
CREATE TABLE processed (
    franchise_id text COLLATE "C" NOT NULL,
    event_id     text COLLATE "C" NOT NULL,
    member_id    text COLLATE "C",
    fingerprint  bytea NOT NULL,
    body         bytea NOT NULL,
    PRIMARY KEY (franchise_id, event_id)
);

-- The fence of a commit: called once, in the commit's single statement, with the rows each
-- conditional part wrote and the rows it had to write; raises SQLSTATE LY409 (the adapter's
-- Error::Conflict) when one fell short, which aborts the statement and so the whole batch.
CREATE FUNCTION loyalty_fence(
    created bigint, want_created integer,
    updated bigint, want_updated integer,
    recorded bigint, want_recorded integer
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF created < want_created OR updated < want_updated OR recorded < want_recorded THEN
        RAISE EXCEPTION USING
            ERRCODE = 'LY409',
            MESSAGE = format(
                'fenced: %s of %s new members already exist, %s of %s members are not at '
                'the expected version, %s of %s records to insert already exist',
                want_created - created, want_created,
                want_updated - updated, want_updated,
                want_recorded - recorded, want_recorded);
    END IF;
    RETURN true;
END
$$;
