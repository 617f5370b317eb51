//! The router's settings: `amqp`, `http` and `log` like every service, `database` like the API,
//! and its own `router.*` section (`HERALD_ROUTER__BATCH_SIZE`, ...).

use herald_runtime::config::BaseConfig;
use herald_storage::db::DatabaseConfig;
use messaging_core::values::{TenantKey, UserId};
use std::time::Duration;

use serde::Deserialize;

/// Where the router's health and metrics endpoints listen unless `HERALD_HTTP__ADDR` says
/// otherwise.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9101";

/// `router.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Delivery rows written, and send jobs published with confirms, per round trip. Bounds
    /// the memory of a fan-out to a large subscription, and amortises the confirms.
    pub batch_size: usize,
    /// The tenant whose user receives legacy `{"title", "body", "sender"}` messages (R41).
    /// Unset: legacy messages are dead-lettered with `legacy_not_configured`.
    pub legacy_tenant: Option<String>,
    /// That tenant's id of the person whose addresses on the legacy message's channel are the
    /// channel's default destination (an operators' group chat, an on-call mailbox, ...).
    pub legacy_user: Option<String>,
    /// How soon a request or delivery event that failed for a passing reason (database or
    /// broker unreachable) is tried again, through the delay queues. Each further attempt
    /// waits twice as long, up to `retry_max_ms`, so the `amqp.max_attempts` attempts span
    /// hours of outage rather than minutes.
    pub retry_after_ms: u64,
    /// The longest wait between two attempts.
    pub retry_max_ms: u64,
    /// R3: an address whose failures span at least this many hours, and ...
    pub address_removal_after_hours: u32,
    /// ... number at least this many, is removed from its person (and that is recorded).
    pub address_removal_failures: u32,
    /// The longest the scheduler sleeps between looks for due schedules (R14).
    pub scheduler_poll_ms: u64,
    /// How often the send-queue watchdog looks at each channel's send queue (its consumers
    /// and waiting jobs, also exported as gauges).
    pub sender_check_ms: u64,
    /// R4 (c): a send queue without a consumer for this long is drained, and each job in it
    /// reported as failed with class `unhealthy`, code `no_sender`, so producers learn that
    /// nothing is sending on the channel instead of waiting forever. Measured per router
    /// replica from when it first saw the queue without a consumer. 0: never drained.
    pub no_sender_after_ms: u64,
    /// Issue #17: take requests only from broker users bound to a tenant, and events only
    /// from Herald's service users; a message without `user_id` is dead-lettered. Off (the
    /// open mode, for a broker on loopback): a message without `user_id` is taken, though a
    /// bound producer is still held to its tenant and a producer's events are still refused.
    pub strict_producers: bool,
    /// Issue #16: small direct requests (named people, the text given) that wait together are
    /// fanned out as one group, in one transaction and one publish, up to this many. 0: each
    /// request alone.
    pub group_max: usize,
    /// How long a group that is not full waits for more requests after its first, at most.
    /// 0: a group takes what is waiting and goes (under load, what arrives while groups are
    /// in work makes the next one).
    pub group_linger_ms: u64,
    /// Groups in work at once; each holds a database connection.
    pub group_parallel: usize,
    /// Issue #16: the send jobs of one publish (a fan-out's batch, a group's requests) that
    /// go to the same send queue travel as bundles of up to this many (at most 100), so the
    /// broker carries one message per bundle. 1: every job alone.
    pub bundle_jobs: usize,
    /// Issue #18: finished messages (and their deliveries) older than this many days are
    /// deleted. 0: kept forever.
    pub keep_finished_days: u32,
    /// How often each router replica looks for messages to delete (seconds).
    pub retention_every_secs: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            // bench-e2e's 100k fan-out: 1,000 took 10.7 s, 2,000 8.6 s, 4,000 7.5 s; larger
            // batches also mean more jobs sent twice after a crash, so not larger.
            batch_size: 2000,
            legacy_tenant: None,
            legacy_user: None,
            retry_after_ms: 5_000,
            retry_max_ms: 600_000,
            address_removal_after_hours: 7 * 24,
            address_removal_failures: 5,
            scheduler_poll_ms: 1_000,
            sender_check_ms: 10_000,
            no_sender_after_ms: 300_000,
            strict_producers: false,
            // bench-e2e (issue #16): 64 and 2 groups about 1,500 notifications/s, 128 and 4
            // about 1,900; eight groups gained nothing more on two cores.
            group_max: 128,
            group_linger_ms: 0,
            group_parallel: 4,
            bundle_jobs: messaging_core::job::SendJobBundle::MAX_JOBS,
            keep_finished_days: 30,
            retention_every_secs: 3600,
        }
    }
}

/// How long a request or event that failed for a passing reason waits before its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The wait after `attempt` (1 for the first): doubling from `base`, with jitter, so the
    /// requests a database outage held up do not all come back in the same second.
    pub fn after(&self, attempt: u32) -> Duration {
        herald_runtime::amqp::backoff::retry_delay(attempt, self.base, self.max)
    }
}

/// The same wait after every attempt.
impl From<Duration> for RetryPolicy {
    fn from(every: Duration) -> Self {
        RetryPolicy {
            base: every,
            max: every,
        }
    }
}

/// Where legacy messages go, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyDestination {
    pub tenant: TenantKey,
    pub user: UserId,
}

impl RouterConfig {
    /// The grouping of small requests, `None` when it is off.
    pub fn grouping(&self) -> Option<herald_runtime::batching::BatchSettings> {
        (self.group_max > 1).then(|| herald_runtime::batching::BatchSettings {
            max: self.group_max,
            linger: Duration::from_millis(self.group_linger_ms),
            parallel: self.group_parallel.max(1),
            name: "router_requests",
        })
    }

    /// Checked at start, so a typo stops the service with a reason instead of dead-lettering
    /// every legacy message later.
    pub fn legacy_destination(&self) -> Result<Option<LegacyDestination>, InvalidConfig> {
        match (&self.legacy_tenant, &self.legacy_user) {
            (None, None) => Ok(None),
            (Some(tenant), Some(user)) => Ok(Some(LegacyDestination {
                tenant: TenantKey::parse(tenant)
                    .map_err(|e| InvalidConfig(format!("router.legacy_tenant: {e}")))?,
                user: UserId::parse(user)
                    .map_err(|e| InvalidConfig(format!("router.legacy_user: {e}")))?,
            })),
            _ => Err(InvalidConfig(
                "router.legacy_tenant and router.legacy_user are set together or not at all".into(),
            )),
        }
    }

    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(InvalidConfig(
                "router.batch_size must be between 1 and 10000".into(),
            ));
        }
        if !(1..=messaging_core::job::SendJobBundle::MAX_JOBS).contains(&self.bundle_jobs) {
            return Err(InvalidConfig(format!(
                "router.bundle_jobs must be between 1 and {}",
                messaging_core::job::SendJobBundle::MAX_JOBS
            )));
        }
        if self.address_removal_failures == 0 {
            return Err(InvalidConfig(
                "router.address_removal_failures must be at least 1".into(),
            ));
        }
        if self.scheduler_poll_ms == 0 {
            return Err(InvalidConfig(
                "router.scheduler_poll_ms must be at least 1".into(),
            ));
        }
        if self.sender_check_ms == 0 {
            return Err(InvalidConfig(
                "router.sender_check_ms must be at least 1".into(),
            ));
        }
        self.legacy_destination().map(drop)
    }

    /// How long a send queue may go without a consumer before it is drained; `None`: never.
    /// How long finished messages are kept; `None`: forever.
    pub fn keep_finished(&self) -> Option<chrono::Duration> {
        (self.keep_finished_days > 0)
            .then(|| chrono::Duration::days(i64::from(self.keep_finished_days)))
    }

    pub fn no_sender_after(&self) -> Option<Duration> {
        (self.no_sender_after_ms > 0).then(|| Duration::from_millis(self.no_sender_after_ms))
    }

    /// When a failing address is removed (R3).
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(self.retry_after_ms.max(1)),
            max: Duration::from_millis(self.retry_max_ms.max(self.retry_after_ms).max(1)),
        }
    }

    pub fn removal_policy(&self) -> herald_storage::tracking::RemovalPolicy {
        herald_storage::tracking::RemovalPolicy {
            after: chrono::Duration::hours(i64::from(self.address_removal_after_hours)),
            failures: i32::try_from(self.address_removal_failures).unwrap_or(i32::MAX),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct InvalidConfig(pub String);

/// The sections besides `BaseConfig`'s, read from the same sources.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Sections {
    router: RouterConfig,
    database: DatabaseConfig,
    verification: LinkCodeKey,
}

/// Everything the router reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub base: BaseConfig,
    pub router: RouterConfig,
    pub database: DatabaseConfig,
    pub verification: LinkCodeKey,
}

/// `verification.*`, the part the router reads: the secret link codes (R5) are hashed with,
/// the same the API issues them with. No `deny_unknown_fields`: the API's own settings share
/// the section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LinkCodeKey {
    pub code_secret: herald_runtime::config::Secret<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Load(#[from] herald_runtime::config::ConfigError),
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
}

impl Config {
    /// Defaults, then `HERALD_CONFIG`, then `HERALD_*` variables; validated.
    pub fn load() -> Result<Config, ConfigError> {
        let base: BaseConfig = herald_runtime::config::load(&[("http.addr", DEFAULT_HTTP_ADDR)])?;
        let Sections {
            router,
            database,
            verification,
        } = herald_runtime::config::load(&[])?;
        router.validate()?;
        // A fan-out holds its lease on one connection while it writes on others.
        if database.max_connections < 3 {
            return Err(InvalidConfig(format!(
                "HERALD_DATABASE__MAX_CONNECTIONS is {}; the router needs at least 3",
                database.max_connections
            ))
            .into());
        }
        Ok(Config {
            base,
            router,
            database,
            verification,
        })
    }
}

#[cfg(test)]
// figment::Jail's closure returns figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn the_router_section_comes_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_ROUTER__BATCH_SIZE", "250");
            jail.set_env("HERALD_ROUTER__LEGACY_TENANT", "ops");
            jail.set_env("HERALD_ROUTER__LEGACY_USER", "on-call");
            jail.set_env("HERALD_DATABASE__MAX_CONNECTIONS", "4");
            jail.set_env("HERALD_ROUTER__NO_SENDER_AFTER_MS", "0");
            let config = Config::load().unwrap();
            assert_eq!(config.router.batch_size, 250);
            assert_eq!(config.router.sender_check_ms, 10_000);
            assert_eq!(config.router.no_sender_after(), None);
            assert_eq!(config.database.max_connections, 4);
            assert_eq!(config.base.http.addr.to_string(), DEFAULT_HTTP_ADDR);
            let legacy = config.router.legacy_destination().unwrap().unwrap();
            assert_eq!(legacy.tenant.as_str(), "ops");
            assert_eq!(legacy.user.as_str(), "on-call");
            Ok(())
        });
    }

    #[test]
    fn half_a_legacy_destination_or_a_bad_batch_size_is_refused() {
        let half = RouterConfig {
            legacy_tenant: Some("ops".into()),
            ..RouterConfig::default()
        };
        assert!(half.validate().unwrap_err().0.contains("together"));
        let zero = RouterConfig {
            batch_size: 0,
            ..RouterConfig::default()
        };
        assert!(zero.validate().is_err());
        let bad_tenant = RouterConfig {
            legacy_tenant: Some("Ops".into()),
            legacy_user: Some("u".into()),
            ..RouterConfig::default()
        };
        assert!(
            bad_tenant
                .validate()
                .unwrap_err()
                .0
                .contains("legacy_tenant")
        );
    }
}
