//! A fresh database for one run (`herald_bench_<random>`), migrated, seeded, and dropped at
//! the end.

use anyhow::Context as _;
use herald_storage::PgPool;
use herald_storage::subscriptions::{self, NewSubscription};
use herald_storage::tenants;
use sqlx::postgres::{PgConnection, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _};
use uuid::Uuid;

/// The tenant every request of the benchmark names.
pub const TENANT: &str = "bench";
/// The subscription the fan-out run triggers.
pub const SUBSCRIPTION: &str = "bench_fanout";
/// The subscription of the large fan-out (memory and transaction length, issue #16).
pub const SUBSCRIPTION_LARGE: &str = "bench_fanout_large";

/// How long PostgreSQL may take to count a backend's transactions in `pg_stat_database`
/// (`PGSTAT_IDLE_INTERVAL`, 10 s, and a margin).
pub const STATS_DELAY: std::time::Duration = std::time::Duration::from_secs(11);

pub struct BenchDb {
    /// The maintenance database's URL: where the bench database is created and dropped.
    admin_url: String,
    pub name: String,
    /// The bench database's URL.
    pub url: String,
    /// A small pool for seeding and checks (the router has its own).
    pub pool: PgPool,
}

impl BenchDb {
    /// Creates the database and applies Herald's migrations.
    pub async fn create(admin_url: &str) -> anyhow::Result<BenchDb> {
        let name = format!(
            "herald_bench_{}",
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let url = with_database(admin_url, &name)?;
        let mut admin = PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connect to PostgreSQL ({admin_url})"))?;
        // The name is ours (letters, digits, underscores): nothing to quote.
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("create database {name}"))?;
        let _ = admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .with_context(|| format!("connect to {name}"))?;
        let db = BenchDb {
            admin_url: admin_url.to_owned(),
            name,
            url,
            pool,
        };
        if let Err(error) = herald_storage::db::migrate(&db.pool).await {
            db.drop_database().await;
            return Err(error).context("apply the migrations");
        }
        Ok(db)
    }

    /// The tenant, `users` people `u1..=u<users>` with one SMS address each, a subscription
    /// with the first `registrations` of them registered by SMS, and `history` finished
    /// messages of a day ago with one sent delivery each.
    ///
    /// The history is what a running system has: without it `messages` and `deliveries`
    /// start empty, the planner's statistics say so, and for the first minute (until
    /// autovacuum analyses them) it scans them sequentially, which measures a fresh install
    /// rather than Herald.
    pub async fn seed(&self, users: u64, registrations: u64, history: u64) -> anyhow::Result<()> {
        let tenant = tenants::create(&self.pool, TENANT, "Benchmark").await?;
        self.people(tenant.id, 1, users).await?;
        self.subscription(tenant.id, SUBSCRIPTION, "Benchmark fan-out", registrations)
            .await?;
        sqlx::query(
            "WITH m AS (
                 INSERT INTO messages (id, tenant_id, source, request, status, created_at,
                                       completed_at, outcome_published_at)
                 SELECT gen_random_uuid(), $1, 'amqp', '{}'::jsonb, 'completed',
                        now() - interval '1 day', now() - interval '1 day',
                        now() - interval '1 day'
                 FROM generate_series(1, $2::bigint)
                 RETURNING id, created_at)
             INSERT INTO deliveries (id, tenant_id, message_id, channel, address, status,
                                     attempts, sent_at, job_published_at, created_at, updated_at)
             SELECT gen_random_uuid(), $1, m.id, 'sms', '+41790000000', 'sent', 1,
                    m.created_at, m.created_at, m.created_at, m.created_at
             FROM m",
        )
        .bind(tenant.id)
        .bind(i64::try_from(history)?)
        .execute(&self.pool)
        .await
        .context("seed history")?;
        sqlx::query("ANALYZE")
            .execute(&self.pool)
            .await
            .context("analyze")?;
        Ok(())
    }

    /// The large fan-out's subscription with `u1..=u<large>` registered, adding the people
    /// above `u<users>` first. Seeded only before that run, so the runs before it measure
    /// the same database whatever its size.
    pub async fn seed_large(&self, users: u64, large: u64) -> anyhow::Result<()> {
        let tenant = tenants::by_key(&self.pool, TENANT).await?;
        if large > users {
            self.people(tenant.id, users + 1, large).await?;
        }
        self.subscription(
            tenant.id,
            SUBSCRIPTION_LARGE,
            "Benchmark large fan-out",
            large,
        )
        .await?;
        sqlx::query("ANALYZE")
            .execute(&self.pool)
            .await
            .context("analyze")?;
        Ok(())
    }

    /// People `u<from>..=u<to>`, each with a proven SMS address (`+4179` and the number).
    async fn people(&self, tenant_id: Uuid, from: u64, to: u64) -> anyhow::Result<()> {
        anyhow::ensure!(
            to <= 9_999_999,
            "at most 9,999,999 users (their numbers have 7 digits)"
        );
        let (from, to) = (i64::try_from(from)?, i64::try_from(to)?);
        sqlx::query(
            "INSERT INTO users (id, tenant_id, external_id)
             SELECT gen_random_uuid(), $1, 'u' || i FROM generate_series($2::bigint, $3::bigint) AS i",
        )
        .bind(tenant_id)
        .bind(from)
        .bind(to)
        .execute(&self.pool)
        .await
        .context("seed users")?;
        sqlx::query(
            "INSERT INTO addresses (id, tenant_id, user_id, channel, kind, value, verified)
             SELECT gen_random_uuid(), tenant_id, id, 'sms', 'sms',
                    '+4179' || lpad(substr(external_id, 2), 7, '0'), true
             FROM users
             WHERE tenant_id = $1 AND substr(external_id, 2)::bigint BETWEEN $2 AND $3",
        )
        .bind(tenant_id)
        .bind(from)
        .bind(to)
        .execute(&self.pool)
        .await
        .context("seed addresses")?;
        Ok(())
    }

    /// A subscription with `u1..=u<registrations>` registered by SMS.
    async fn subscription(
        &self,
        tenant_id: Uuid,
        key: &str,
        label: &str,
        registrations: u64,
    ) -> anyhow::Result<()> {
        let subscription = subscriptions::create(
            &self.pool,
            tenant_id,
            NewSubscription {
                key,
                label,
                description: "",
                system: false,
                enabled: true,
                fallback_locale: "en",
                actor: "bench-e2e",
            },
        )
        .await?;
        sqlx::query(
            "INSERT INTO registrations (id, tenant_id, subscription_id, user_id, channel, address)
             SELECT gen_random_uuid(), u.tenant_id, $2, u.id, 'sms',
                    '+4179' || lpad(substr(u.external_id, 2), 7, '0')
             FROM users u
             WHERE u.tenant_id = $1 AND substr(u.external_id, 2)::bigint <= $3",
        )
        .bind(tenant_id)
        .bind(subscription.id)
        .bind(i64::try_from(registrations)?)
        .execute(&self.pool)
        .await
        .with_context(|| format!("seed the registrations of {key}"))?;
        Ok(())
    }

    /// Closes the pool and drops the database (forcing out any connection left over).
    /// Transactions the bench database has seen so far (`pg_stat_database`, committed and
    /// rolled back). A backend reports its counts when it goes idle, at most about every 10 s
    /// ([`STATS_DELAY`]), so read it that long after the work to count.
    pub async fn transactions(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&self.name)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Messages stored by the REST API (`source = 'api'`).
    pub async fn api_messages(&self) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE source = 'api'")
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    pub async fn drop_database(&self) {
        self.pool.close().await;
        let dropped = async {
            let mut admin = PgConnection::connect(&self.admin_url).await?;
            sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut admin)
            .await?;
            let _ = admin.close().await;
            anyhow::Ok(())
        }
        .await;
        if let Err(error) = dropped {
            eprintln!(
                "bench-e2e: could not drop database {}: {error:#}",
                self.name
            );
        }
    }
}

/// `admin_url` with its database replaced by `name`.
fn with_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let (scheme, rest) = admin_url
        .split_once("://")
        .context("the database URL needs a scheme (postgres://...)")?;
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    let mut url = format!("{scheme}://{authority}/{name}");
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Ok(url)
}
