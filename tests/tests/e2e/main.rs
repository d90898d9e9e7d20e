//! The end-to-end suite, one test binary (one link instead of one per file, and a fraction of
//! the disk): each module is a scenario file of its own; `cargo nextest run -p loyalty-tests
//! --test e2e crash::` runs one.

mod api;
mod api_keys;
mod audit;
mod birthdays;
mod campaign_results;
mod campaigns;
mod card_data;
mod card_sign_in;
mod checkpoint;
mod consent;
mod crash;
mod dashboard;
mod dashboard_page;
mod datadir_lock;
mod dead_letters;
mod demo_history;
mod designing;
mod disk_full;
mod distributed;
mod earn_rules;
mod engine_exit;
mod engine_faults;
mod hostile_input;
mod item_bonuses;
mod listener_limits;
mod member_pages;
mod metrics_scrape;
mod multiprocess;
mod pii_at_rest;
mod pos_topic;
mod privacy;
mod program_updates;
mod redemption_codes;
mod refunds;
mod repo_hygiene;
mod rewards;
mod scheduler;
mod segments;
mod self_enrolment;
mod sharding;
mod tenant_isolation;
mod tiers;
mod tracing_otlp;
mod wallet;
