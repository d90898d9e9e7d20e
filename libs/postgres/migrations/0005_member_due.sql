-- 0005_member_due: the scheduler's due index (StateStore::due_members). One row per member
-- with something due (its next lot expiry, or the day its oldest counted activity leaves the
-- tier window): when, and in which log partition, so that each engine shard reads the due
-- members of the partition it owns. Written in the member's commit, so it never disagrees
-- with the state; members stored before this migration get their row at their next write.
CREATE TABLE member_due (
    member_id    text COLLATE "C" PRIMARY KEY,
    franchise_id text COLLATE "C" NOT NULL,
    partition    integer NOT NULL CHECK (partition >= 0),
    -- Milliseconds since the Unix epoch, UTC.
    due_at       bigint NOT NULL
);
CREATE INDEX member_due_by_partition ON member_due (partition, due_at, member_id);
