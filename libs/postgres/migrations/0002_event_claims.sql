-- 0002_event_claims: who owns an event id. The first claim of (franchise, event id) wins,
-- forever (INSERT ... ON CONFLICT DO NOTHING); later claims read the owner's fingerprint.
CREATE TABLE event_claims (
    franchise_id text COLLATE "C" NOT NULL,
    event_id     text COLLATE "C" NOT NULL,
    fingerprint  bytea NOT NULL CHECK (length(fingerprint) = 16),
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (franchise_id, event_id)
);
