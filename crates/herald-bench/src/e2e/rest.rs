//! The REST ingress run (issue #16 item 4): the real subscription API, in this process, with
//! its outbox relay, loaded by `wrk` (a real HTTP load generator, Debian's `wrk` package)
//! with `POST /api/messaging/messages`, each request with its own `Idempotency-Key`.
//!
//! `wrk` keeps a fixed number of connections busy for a fixed time and reports the requests
//! it completed and their latency percentiles. What was accepted is counted in the database
//! (`messages` with source `api`), which also holds what `wrk` sent but stopped waiting for
//! at the end; every accepted message must then reach its outcome, so the run also checks
//! that the API's path through the outbox, the router and the sender works under load.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use herald_runtime::amqp::Publisher;
use herald_runtime::config::{BaseConfig, Secret};
use herald_storage::api_keys::{self, NewKey};
use herald_storage::db::DatabaseConfig;
use herald_storage::relay::OutboxRelay;
use herald_storage::tenants;
use subscription_api::AppState;
use subscription_api::auth::JwtKeys;
use subscription_api::config::{AuthConfig, LimitsConfig, VerificationConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::db::{BenchDb, TENANT};
use super::system::System;

/// The key prefix of the run's requests: `rest-<thread>-<n>`.
const PREFIX: &str = "rest";

/// What `wrk` measured, and what the database and the outcomes say of it.
pub struct Rest {
    pub connections: u32,
    pub duration: Duration,
    /// Requests `wrk` completed, per second of its run.
    pub rate: f64,
    /// Messages the API stored (202), counted in the database.
    pub accepted: u64,
    /// Accepted messages per second of the run.
    pub accepted_rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Answers that were not 2xx, and socket errors (connect, read, write, timeout).
    pub refused: u64,
    pub socket_errors: u64,
    /// Accepted messages whose outcome arrived, all delivered.
    pub delivered: u64,
}

/// The API on a free port of loopback with its outbox relay, as `subscription-api serve`
/// runs it, and a tenant admin's key.
struct Api {
    url: String,
    key: String,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Api {
    async fn start(database_url: &str, base: &BaseConfig, connections: u32) -> anyhow::Result<Api> {
        let database = DatabaseConfig {
            url: Secret::new(database_url.to_owned()),
            max_connections: connections,
            ..DatabaseConfig::default()
        };
        let pool = herald_storage::db::pool(&database)?;
        // R18's limits are policy, set by the operator for the expected load: here they must
        // not be what is measured.
        let limits = LimitsConfig {
            caller_per_minute: 100_000_000,
            tenant_messages_per_minute: 100_000_000,
            tenant_recipients_per_minute: 100_000_000,
            ..LimitsConfig::default()
        };
        let (service, stop) = super::system::service("bench-api", base.clone()).await?;
        let url = format!("http://{}", service.local_addr()?);
        let state = AppState {
            pool: pool.clone(),
            jwt: Arc::new(JwtKeys::from_config(&AuthConfig::default())?),
            names: service.topology.names().clone(),
            limits: subscription_api::limits::RateLimits::new(&limits, Some(pool.clone()))
                .map_err(anyhow::Error::msg)?,
            link_code_ttl: limits.link_code_ttl(),
            websocket: Arc::default(),
            verifier: Arc::new(
                subscription_api::verification::Verifier::from_config(
                    &VerificationConfig {
                        code_secret: Secret::new("bench-code-secret".into()),
                        ..VerificationConfig::default()
                    },
                    &limits,
                )
                .map_err(anyhow::Error::msg)?,
            ),
            accepts: subscription_api::accepts::Accepts::spawn(pool.clone()),
        };
        let tenant = tenants::by_key(&pool, TENANT).await?;
        let (_, key) = api_keys::create(
            &pool,
            NewKey {
                tenant_id: Some(tenant.id),
                role: messaging_core::Role::TenantAdmin,
                user_id: None,
                name: "bench-e2e",
                created_by: "bench-e2e",
            },
        )
        .await?;
        let relay = OutboxRelay::new(pool, Publisher::new(service.broker.clone(), "outbox"));
        let relay = tokio::spawn(relay.run(service.shutdown.clone()));
        let app = subscription_api::startup::app(state, &limits);
        let task = tokio::spawn(service.run(app, async move {
            let _ = relay.await;
        }));
        Ok(Api {
            url,
            key,
            stop,
            task,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .context("the API stops within 60 s")???;
        Ok(())
    }
}

/// The `wrk` script: a POST with a unique key and a user cycling through `u1..=u<users>`
/// per request, and a last line with the figures for [`parse`].
const SCRIPT: &str = r#"
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  key = args[1]
  users = tonumber(args[2])
  n = 0
end

function request()
  n = n + 1
  local idem = "rest-" .. id .. "-" .. n
  local user = "u" .. ((n * 7 + id) % users + 1)
  local body = '{"to":{"users":["' .. user .. '"]},"content":{"direct":{"body":'
    .. '"Your order 12345 has shipped and should arrive within two days."}},"channels":["sms"]}'
  return wrk.format("POST", "/api/messaging/messages", {
    ["Content-Type"] = "application/json",
    ["X-Api-Key"] = key,
    ["Idempotency-Key"] = idem,
  }, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("HERALD_WRK %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#;

/// `wrk`'s figures from the script's last line: requests, duration (µs), non-2xx answers,
/// socket errors, p50, p99 and max latency (µs).
fn parse(stdout: &str) -> anyhow::Result<[u64; 7]> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("HERALD_WRK "))
        .context("wrk printed no HERALD_WRK line")?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("wrk's figures: {line}"))?;
    numbers
        .try_into()
        .map_err(|n: Vec<u64>| anyhow::anyhow!("7 figures from wrk, got {}", n.len()))
}

/// Runs `wrk` against the API for `duration` with `connections` connections, then waits
/// until every accepted message has its outcome.
pub async fn run(
    system: &mut System,
    db: &BenchDb,
    connections: u32,
    duration: Duration,
    users: u64,
    timeout: Duration,
) -> anyhow::Result<Rest> {
    which_wrk()?;
    system.drain_outcomes();
    // The API's pool as deployed (`database.max_connections`' default).
    let api = Api::start(
        &db.url,
        system.base(),
        DatabaseConfig::default().max_connections,
    )
    .await
    .context("start the subscription API")?;
    let result = load(system, db, &api, connections, duration, users, timeout).await;
    let stopped = api.stop().await;
    let rest = result?;
    stopped?;
    Ok(rest)
}

async fn load(
    system: &mut System,
    db: &BenchDb,
    api: &Api,
    connections: u32,
    duration: Duration,
    users: u64,
    timeout: Duration,
) -> anyhow::Result<Rest> {
    let script = std::env::temp_dir().join(format!("herald-bench-{}.lua", std::process::id()));
    std::fs::write(&script, SCRIPT).context("write the wrk script")?;
    let output = tokio::process::Command::new("wrk")
        .arg(format!("--threads={}", connections.clamp(1, 2)))
        .arg(format!("--connections={connections}"))
        .arg(format!("--duration={}s", duration.as_secs().max(1)))
        .arg("--timeout=10s")
        .arg(format!("--script={}", script.display()))
        .arg(&api.url)
        .arg("--")
        .arg(&api.key)
        .arg(users.max(1).to_string())
        .kill_on_drop(true)
        .output()
        .await;
    let _ = std::fs::remove_file(&script);
    let output = output.context("run wrk")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let [requests, micros, refused, socket_errors, p50, p99, max] = parse(&stdout)?;
    let elapsed = Duration::from_micros(micros.max(1));
    let accepted = db.api_messages().await?;
    let delivered = wait_for_outcomes(system, accepted, timeout).await?;
    Ok(Rest {
        connections,
        duration: elapsed,
        rate: herald_bench::stats::rate(requests, elapsed),
        accepted,
        accepted_rate: herald_bench::stats::rate(accepted, elapsed),
        p50: Duration::from_micros(p50),
        p99: Duration::from_micros(p99),
        max: Duration::from_micros(max),
        refused,
        socket_errors,
        delivered,
    })
}

/// Waits until `accepted` outcomes of the run's requests arrived; returns how many of them
/// say delivered.
async fn wait_for_outcomes(
    system: &mut System,
    accepted: u64,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = HashSet::new();
    let mut delivered = 0;
    while (seen.len() as u64) < accepted {
        let Some(arrival) = system.next_outcome(deadline).await else {
            bail!(
                "REST: {} of {accepted} accepted messages had an outcome after {timeout:?}",
                seen.len()
            );
        };
        if arrival.key.starts_with(PREFIX) && seen.insert(arrival.key) && arrival.delivered {
            delivered += 1;
        }
    }
    Ok(delivered)
}

/// `wrk` is installed by `scripts/bench-tools.sh` (`just bench-e2e` runs it).
pub fn which_wrk() -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("wrk"))
        .find(|path| path.is_file())
        .context("wrk is not installed: run scripts/bench-tools.sh (`just bench-e2e` does)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_figures_of_the_scripts_last_line() {
        let out = "Running 10s test\n  2 threads\nHERALD_WRK 20000 10001234 3 1 4200 31000 88000\n";
        assert_eq!(
            parse(out).unwrap(),
            [20000, 10001234, 3, 1, 4200, 31000, 88000]
        );
        assert!(parse("no line").is_err());
        assert!(parse("HERALD_WRK 1 2 3").is_err());
    }
}
