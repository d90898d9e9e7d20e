-- 0008_outbox: the durable campaign outbox (StateStore::outbox_due, outbox_entry,
-- update_outbox). One row per message a campaign firing asks for (id
-- `<member>/<campaign>/<firing key>/<channel>`), inserted by the member's commit statement
-- (ON CONFLICT (id) DO NOTHING: a replay keeps the first), then updated by the delivery
-- worker, fenced on (state = 'pending', attempts). `body` is the entry's serde_json document,
-- byte for byte what the other stores keep; the columns beside it are what the statements
-- filter and fence on. (Version 7 is left to a migration of another branch.)
CREATE TABLE outbox (
    id              text COLLATE "C" PRIMARY KEY,
    franchise_id    text COLLATE "C" NOT NULL,
    member_id       text COLLATE "C" NOT NULL,
    partition       integer NOT NULL CHECK (partition >= 0),
    -- Milliseconds since the Unix epoch, UTC.
    next_attempt_at bigint NOT NULL,
    state           text NOT NULL
        CHECK (state IN ('pending', 'delivered', 'failed', 'skipped')),
    attempts        integer NOT NULL CHECK (attempts >= 0),
    body            bytea NOT NULL
);
-- What each node's delivery worker reads: its partition's pending entries, earliest first.
CREATE INDEX outbox_pending_by_partition ON outbox (partition, next_attempt_at, id)
    WHERE state = 'pending';
