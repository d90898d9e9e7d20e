//! PostgreSQL errors onto the port's [`Error`] variants.
//!
//! | what happened | SQLSTATE | [`Error`] |
//! | --- | --- | --- |
//! | the commit's fence failed (a member's version, an existing member or record) | `LY409` (raised by `loyalty_fence`) | `Conflict` |
//! | a unique key already taken (a ledger row, a record, a program) | `23505` | `Conflict` |
//! | serialization failure, deadlock, statement timeout, lock timeout | `40001`, `40P01`, `57014`, `55P03` | `Unavailable` |
//! | connection lost or refused, server shutting down or starting, too many connections, read-only standby | classes `08`, `53`, `57`, `58`, `25`, `40`, no SQLSTATE (I/O, closed, pool timeout) | `Unavailable` |
//! | a table or function missing (schema not migrated) | `42P01`, `42883`, `42703` | `Invalid`, naming `loyalty migrate` |
//! | data or index corruption reported by the server | `XX001`, `XX002` | `Corrupt` |
//! | a stored value that does not decode | (client side) | `Corrupt` |
//! | anything else (a bad value, a constraint) | | `Invalid` |
//!
//! `Unavailable` is the transient kind: the caller may retry the same operation.

use std::error::Error as _;

use deadpool_postgres::PoolError;
use loyalty_core::Error;

/// SQLSTATE raised by the schema's `loyalty_fence` function when a commit's conditions fail.
pub(crate) const FENCE_SQLSTATE: &str = "LY409";

/// A readable description of a driver error: the server's message, code and detail for a
/// database error; the error and its causes otherwise. Never contains a password (the
/// driver's messages do not carry one, and the URL is never part of them).
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} ({} {})", db.message(), db.severity(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str(": ");
            s.push_str(d);
        }
        return s;
    }
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Maps a driver error met while doing `what`.
pub(crate) fn pg(what: &str, e: &tokio_postgres::Error) -> Error {
    let msg = format!("postgres: {what}: {}", describe(e));
    let Some(code) = e.code() else {
        // Client-side: I/O, a closed connection, a timeout, or a value that does not convert.
        let text = e.to_string();
        return if text.starts_with("error deserializing") {
            Error::Corrupt(msg)
        } else if text.starts_with("error serializing")
            || text.starts_with("invalid connection string")
            || text.starts_with("invalid configuration")
        {
            Error::Invalid(msg)
        } else {
            Error::Unavailable(msg)
        };
    };
    let code = code.code();
    match code {
        FENCE_SQLSTATE | "23505" => Error::Conflict(msg),
        "40001" | "40P01" | "57014" | "55P03" | "55006" => Error::Unavailable(msg),
        "42P01" | "42883" | "42703" => Error::Invalid(format!(
            "{msg} (is the schema migrated? run `loyalty migrate`)"
        )),
        "XX001" | "XX002" => Error::Corrupt(msg),
        _ if ["08", "53", "57", "58", "25", "40", "XX"]
            .iter()
            .any(|class| code.starts_with(class)) =>
        {
            Error::Unavailable(msg)
        }
        _ => Error::Invalid(msg),
    }
}

/// Maps an error of the pool met while getting a connection for `what`.
pub(crate) fn pool(what: &str, e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => pg(what, &e),
        PoolError::Closed => Error::ShuttingDown,
        other => Error::Unavailable(format!("postgres: {what}: connection pool: {other}")),
    }
}

/// A stored value that does not decode.
pub(crate) fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("postgres: {what}: {e}"))
}
