//! The tansu broker for tests (to be written).
