-- 0003_dashboards: the dashboards' daily aggregates (what the batches' DashboardDelta adds),
-- and the index of a franchise's stores.
--
-- Every aggregate is a sum that commits add to (INSERT ... ON CONFLICT DO UPDATE SET x = t.x +
-- EXCLUDED.x) in the commit's own statement, so that an event counts once: a batch refused by
-- the fence adds nothing. Days are `loyalty_domain::Day` numbers (days since 1970-01-01 in the
-- franchise's time zone). Keys start with (franchise_id, day) so that a dashboard reads one
-- range of the primary key's index.

-- The stores of a franchise (StateStore::stores_of).
CREATE INDEX stores_by_franchise ON stores (franchise_id, id);

-- Daily totals of one store: one column per counter of DayTotals.
CREATE TABLE dashboard_totals (
    franchise_id            text COLLATE "C" NOT NULL,
    day                     integer NOT NULL,
    store_id                text COLLATE "C" NOT NULL,
    member_purchases        bigint NOT NULL DEFAULT 0,
    anonymous_purchases     bigint NOT NULL DEFAULT 0,
    member_revenue_cents    bigint NOT NULL DEFAULT 0,
    anonymous_revenue_cents bigint NOT NULL DEFAULT 0,
    refunded_cents          bigint NOT NULL DEFAULT 0,
    enrolments              bigint NOT NULL DEFAULT 0,
    points_issued           bigint NOT NULL DEFAULT 0,
    points_redeemed         bigint NOT NULL DEFAULT 0,
    points_expired          bigint NOT NULL DEFAULT 0,
    redemptions             bigint NOT NULL DEFAULT 0,
    reward_cost_cents       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (franchise_id, day, store_id)
);

-- Redemptions by reward of one store on one day (DayTotals::rewards). Every row has its
-- dashboard_totals row (the commit writes both).
CREATE TABLE dashboard_rewards (
    franchise_id text COLLATE "C" NOT NULL,
    day          integer NOT NULL,
    store_id     text COLLATE "C" NOT NULL,
    reward_id    text COLLATE "C" NOT NULL,
    n            bigint NOT NULL,
    PRIMARY KEY (franchise_id, day, store_id, reward_id)
);

-- Visit counts: how many purchases of `day` in `scope` ('' = the whole franchise, else a store
-- id) have the visit key `key` (VisitKey::pack). A count that reaches 0 is deleted (trigger
-- below), so a row is never 0.
CREATE TABLE dashboard_visits (
    franchise_id text COLLATE "C" NOT NULL,
    day          integer NOT NULL,
    scope        text COLLATE "C" NOT NULL,
    key          integer NOT NULL,
    n            bigint NOT NULL,
    PRIMARY KEY (franchise_id, day, scope, key)
);

-- Deletes a visit count that an increment brought to 0. An AFTER trigger runs once the
-- commit's statement has done its writes, in the same transaction: the row disappears with
-- the commit, or stays if the commit aborts.
CREATE FUNCTION loyalty_drop_zero_visit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM dashboard_visits
    WHERE franchise_id = NEW.franchise_id AND day = NEW.day AND scope = NEW.scope
      AND key = NEW.key AND n = 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER dashboard_visits_drop_zero
    AFTER UPDATE ON dashboard_visits
    FOR EACH ROW WHEN (NEW.n = 0)
    EXECUTE FUNCTION loyalty_drop_zero_visit();

-- Members by tier, now.
CREATE TABLE dashboard_tiers (
    franchise_id text COLLATE "C" NOT NULL,
    tier         text COLLATE "C" NOT NULL,
    n            bigint NOT NULL,
    PRIMARY KEY (franchise_id, tier)
);
