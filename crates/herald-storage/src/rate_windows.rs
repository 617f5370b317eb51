//! Per-minute request counts of the API's rate limits, shared by its replicas
//! (`rate_windows`, migration 0016). The keys are made by the API from authenticated
//! identities (`caller:<tenant>:<actor>`, `tenant-messages:<tenant>`, ...), never from what a
//! client sent before it was authenticated.

use sqlx::PgExecutor;

use crate::error::StoreError;

/// One key's count in one minute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub key: String,
    pub minute: i64,
    pub count: i64,
}

/// Adds each `(key, minute, n)` to the shared counts, in one statement. Keys come sorted, so
/// two replicas adding the same keys lock them in the same order.
pub async fn add(db: impl PgExecutor<'_>, adds: &[(String, i64, i64)]) -> Result<(), StoreError> {
    if adds.is_empty() {
        return Ok(());
    }
    let mut adds = adds.to_vec();
    adds.sort();
    let (keys, minutes, counts): (Vec<String>, Vec<i64>, Vec<i64>) = adds.into_iter().fold(
        (vec![], vec![], vec![]),
        |(mut k, mut m, mut c), (key, minute, n)| {
            k.push(key);
            m.push(minute);
            c.push(n);
            (k, m, c)
        },
    );
    sqlx::query(
        "INSERT INTO rate_windows (key, minute, count)
         SELECT key, minute, sum(n)::bigint
           FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS a (key, minute, n)
          GROUP BY key, minute
          ORDER BY key, minute
         ON CONFLICT (key, minute) DO UPDATE SET count = rate_windows.count + excluded.count",
    )
    .bind(keys)
    .bind(minutes)
    .bind(counts)
    .execute(db)
    .await?;
    Ok(())
}

/// The counts of `keys` in `minute` and the minute before (absent: nothing counted).
pub async fn read(
    db: impl PgExecutor<'_>,
    keys: &[String],
    minute: i64,
) -> Result<Vec<Count>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT key, minute, count FROM rate_windows
          WHERE key = ANY($1) AND minute IN ($2 - 1, $2)",
    )
    .bind(keys)
    .bind(minute)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, minute, count)| Count { key, minute, count })
        .collect())
}

/// Drops the counts older than the minute before `minute`, which no limit reads any more.
pub async fn forget_before(db: impl PgExecutor<'_>, minute: i64) -> Result<u64, StoreError> {
    Ok(
        sqlx::query("DELETE FROM rate_windows WHERE minute < $1 - 1")
            .bind(minute)
            .execute(db)
            .await?
            .rows_affected(),
    )
}
