-- 0007_reindex: the re-index of each partition's due entries (README "The scheduler").
-- A member keeps its row of `member_due` when nothing is due (`due_at` NULL, never read as
-- due), so that the row lists the member in its partition: `member_due_by_franchise` serves
-- StateStore::partition_members, the sweep of one franchise's members of one partition after
-- a program change. Members stored before 0005 (or whose row an older engine deleted when
-- nothing was due) have no row until their partition's one-time sweep of every member gives
-- them one. `reindex_marks` holds each partition's mark (the JSON of
-- loyalty_core::ports::ReindexMark): what its owner's sweeps have done.
ALTER TABLE member_due ALTER COLUMN due_at DROP NOT NULL;
CREATE INDEX member_due_by_franchise ON member_due (partition, franchise_id, member_id);
CREATE TABLE reindex_marks (
    partition integer PRIMARY KEY CHECK (partition >= 0),
    body      bytea NOT NULL
);
