//! Storage errors, classified for the HTTP layer: not found (404), conflict (409), invalid
//! (422), unavailable (503), and everything else (500).

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique constraint: the thing exists already. Names the constraint.
    #[error("already exists ({0})")]
    Conflict(String),
    /// A check or foreign-key constraint: the data breaks a rule of the model.
    #[error("violates {0}")]
    Invalid(String),
    /// The database cannot be reached now (R4 c): the caller answers 503.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Other(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) => {
                let constraint = db.constraint().unwrap_or("a constraint").to_owned();
                if db.is_unique_violation() {
                    StoreError::Conflict(constraint)
                } else if db.is_foreign_key_violation() || db.is_check_violation() {
                    StoreError::Invalid(constraint)
                } else if db.code().is_some_and(|c| {
                    c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
                }) {
                    // The server going away under a query (57P01 admin shutdown, 57P02 crash
                    // shutdown: "terminating connection due to unexpected postmaster exit"),
                    // not yet taking connections (57P03), a lost connection (class 08), or out
                    // of resources (class 53: too many connections): passing, so the caller
                    // answers 503 and the client tries again. `just chaos` scenario 4 found a
                    // 500 for a request caught by a crash.
                    StoreError::Unavailable(db.message().to_owned())
                } else if db.code().is_some_and(|c| c.starts_with("22")) {
                    // Class 22, data exceptions: a NUL byte in text, a number out of range.
                    // The same data fails the same way every time; retrying cannot help.
                    StoreError::Invalid(db.message().to_owned())
                } else {
                    StoreError::Other(error)
                }
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => StoreError::Unavailable(error.to_string()),
            _ => StoreError::Other(error),
        }
    }
}

/// For updates and deletes by id: no row affected means there was no such row (for this
/// tenant).
pub fn expect_row(done: sqlx::postgres::PgQueryResult) -> Result<(), StoreError> {
    if done.rows_affected() == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}
