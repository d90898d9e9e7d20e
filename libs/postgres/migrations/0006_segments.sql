-- 0006_segments: the changes of segment sizes (README "Segments"), what the batches'
-- DashboardDelta::segments adds: for each (franchise, segment, local day), the sum of the
-- members who joined the segment that day minus those who left it. A segment's size on a day
-- is the sum of its rows up to that day. Added to in the commit's own statement, like the
-- other aggregates, so that a change counts once; a sum of 0 is left in place and not read.
CREATE TABLE dashboard_segments (
    franchise_id text COLLATE "C" NOT NULL,
    segment      text COLLATE "C" NOT NULL,
    day          integer NOT NULL,
    n            bigint NOT NULL,
    PRIMARY KEY (franchise_id, segment, day)
);
