//! The system under test: a RabbitMQ node (or a 3-node cluster) and a PostgreSQL cluster of
//! the suite's own, the fake SMS provider, and Herald's services as processes (the API, the
//! router and one or more SMS senders), configured as an operator would configure them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use herald_runtime::config::{AmqpConfig, Secret};
use herald_storage::{PgPool, api_keys, tenants};
use herald_testkit::fake_sms::FakeSms;
use herald_testkit::pg_node::PgNode;
use herald_testkit::rabbit_node::RabbitNode;
use messaging_core::topology::Names;

use crate::process::ServiceProcess;
use crate::proxy::Proxy;

/// The tenant every request names.
pub const TENANT: &str = "chaos";
const SMS_SID: &str = "ACchaos";
const SMS_TOKEN: &str = "chaos-sms-token";
const DATABASE: &str = "herald";
/// How long a service may take to become ready after a start.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// `HERALD_AMQP__DRAIN_DEADLINE_MS` in the suite (the default is 20 s): short, so a rolling
/// update of each service takes seconds, and still long for jobs that take milliseconds.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Options {
    /// Where the service binaries are (`target/release`).
    pub bin_dir: PathBuf,
    /// Where each service's log goes (one file per service, appended across restarts).
    pub log_dir: PathBuf,
    /// People in the tenant, each with one verified SMS number.
    pub users: u32,
    /// SMS sender processes.
    pub sender_replicas: usize,
    /// Put a TCP proxy between the services and the broker (scenario 5).
    pub via_proxy: bool,
    /// Three clustered RabbitMQ nodes instead of one (scenario 10).
    pub cluster: bool,
    /// More environment for the senders (limits, for scenario 8).
    pub sender_env: Vec<(String, String)>,
}

pub struct Stack {
    /// The broker's nodes: one, or three clustered.
    pub brokers: Vec<RabbitNode>,
    pub proxy: Option<Proxy>,
    pub pg: PgNode,
    /// A small pool of the suite's own for seeding and checks.
    pub pool: PgPool,
    pub sms: std::sync::Arc<FakeSms>,
    pub api: ServiceProcess,
    pub router: ServiceProcess,
    pub senders: Vec<ServiceProcess>,
    /// A tenant admin's API key for `chaos`.
    pub api_key: String,
    pub names: Names,
    /// The suite's own broker settings (direct to the first node, never through the proxy).
    pub amqp: AmqpConfig,
    pub users: u32,
}

impl Stack {
    /// Starts everything and waits until every service is ready.
    pub async fn start(name: &str, options: &Options) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(&options.log_dir)?;
        let brokers = start_brokers(name, options.cluster).await?;
        let first = SocketAddr::from(([127, 0, 0, 1], brokers[0].port()));
        let proxy = if options.via_proxy {
            Some(Proxy::start(first).await?)
        } else {
            None
        };
        let service_broker = proxy.as_ref().map_or(first, Proxy::addr);
        let pg = {
            let name = name.to_owned();
            tokio::task::spawn_blocking(move || {
                let pg = PgNode::start(&name);
                pg.create_database(DATABASE);
                pg
            })
            .await?
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&pg.url(DATABASE))
            .await
            .context("connect to the suite's PostgreSQL")?;
        herald_storage::db::migrate(&pool)
            .await
            .context("apply the migrations")?;
        let api_key = seed(&pool, options.users).await?;
        let sms = std::sync::Arc::new(FakeSms::start(SMS_SID, SMS_TOKEN).await);

        let mut common = vec![
            env(
                "HERALD_AMQP__URL",
                format!("amqp://guest:guest@{service_broker}/%2f"),
            ),
            // Quick retries and reconnects, so a run takes minutes; the mechanisms are the
            // production ones.
            env("HERALD_AMQP__DELAYS_MS", "[200, 1000, 5000]"),
            env("HERALD_AMQP__RECONNECT_MAX_MS", "2000"),
            env("HERALD_AMQP__CONNECT_TIMEOUT_MS", "2000"),
            env(
                "HERALD_AMQP__DRAIN_DEADLINE_MS",
                DRAIN_DEADLINE.as_millis().to_string(),
            ),
            env("HERALD_LOG__FILTER", "info"),
        ];
        if options.cluster {
            let others: Vec<String> = brokers[1..]
                .iter()
                .map(|b| format!("127.0.0.1:{}", b.port()))
                .collect();
            common.push(env("HERALD_AMQP__NODES", others.join(",")));
        }
        let database = vec![
            env("HERALD_DATABASE__URL", pg.url(DATABASE)),
            env("HERALD_VERIFICATION__CODE_SECRET", "chaos-code-secret"),
        ];
        let service = |binary: &str, name: &str, extra: &[(String, String)]| {
            let mut all = common.clone();
            all.extend(extra.iter().cloned());
            ServiceProcess::new(
                &options.bin_dir,
                binary,
                name,
                free_addr()?,
                all,
                &options.log_dir,
            )
        };
        let api = service("subscription-api", "subscription-api", &database)?;
        let mut router_env = database.clone();
        router_env.extend([
            env("HERALD_ROUTER__RETRY_AFTER_MS", "1000"),
            env("HERALD_ROUTER__RETRY_MAX_MS", "10000"),
        ]);
        let router = service("fanout-router", "fanout-router", &router_env)?;
        let mut sender_env = vec![
            env("HERALD_SMS__BASE_URL", sms.base_url()),
            env("HERALD_SMS__ACCOUNT_SID", SMS_SID),
            env("HERALD_SMS__AUTH_TOKEN", SMS_TOKEN),
            env("HERALD_SMS__FROM", "\"+15005550006\""),
            env("HERALD_SENDER__RETRY_BASE_MS", "200"),
            env("HERALD_SENDER__RETRY_MAX_MS", "5000"),
            env("HERALD_SENDER__BREAKER_PROBE_MS", "1000"),
            // No per-recipient spacing: the load sends to a few hundred people many times.
            env("HERALD_SENDER__RECIPIENT_INTERVAL_MS", "1"),
            env("HERALD_SENDER__RECIPIENT_BURST", "100000"),
            env("HERALD_SENDER__RECIPIENT_WINDOWS", "none"),
        ];
        if !options
            .sender_env
            .iter()
            .any(|(k, _)| k == "HERALD_SENDER__ACCOUNT_PER_SECOND")
        {
            sender_env.push(env("HERALD_SENDER__ACCOUNT_PER_SECOND", "10000"));
            sender_env.push(env("HERALD_SENDER__ACCOUNT_BURST", "10000"));
        }
        sender_env.extend(options.sender_env.iter().cloned());
        let senders = (1..=options.sender_replicas.max(1))
            .map(|i| {
                let name = if i == 1 {
                    "sender-sms".to_owned()
                } else {
                    format!("sender-sms-{i}")
                };
                service("sender-sms", &name, &sender_env)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;

        let amqp = AmqpConfig {
            url: Secret::new(format!("amqp://guest:guest@{first}/%2f")),
            nodes: brokers[1..]
                .iter()
                .map(|b| format!("127.0.0.1:{}", b.port()))
                .collect::<Vec<_>>()
                .join(","),
            publish_timeout_ms: 120_000,
            reconnect_max_ms: 1_000,
            connect_timeout_ms: 2_000,
            ..AmqpConfig::default()
        };
        let names = Names::new(amqp.prefix.clone());
        let mut stack = Stack {
            brokers,
            proxy,
            pg,
            pool,
            sms,
            api,
            router,
            senders,
            api_key,
            names,
            amqp,
            users: options.users,
        };
        // The router first: it declares the topology the others use.
        stack.router.start()?;
        stack.router.wait_ready(READY_TIMEOUT).await?;
        stack.api.start()?;
        for sender in &mut stack.senders {
            sender.start()?;
        }
        stack.api.wait_ready(READY_TIMEOUT).await?;
        for sender in &mut stack.senders {
            sender.wait_ready(READY_TIMEOUT).await?;
        }
        Ok(stack)
    }

    /// `http://<api>/api/messaging`.
    pub fn api_base(&self) -> String {
        format!("http://{}/api/messaging", self.api.addr)
    }

    /// Every service process, for "is anything down" checks.
    pub fn processes(&mut self) -> Vec<&mut ServiceProcess> {
        let mut all = vec![&mut self.api, &mut self.router];
        all.extend(self.senders.iter_mut());
        all
    }

    /// Stops every service (SIGKILL: the run is over) and the broker and database with them
    /// (their `Drop`).
    pub async fn stop(mut self) {
        for process in self.processes() {
            process.kill().await;
        }
        self.pool.close().await;
        let Stack { brokers, pg, .. } = self;
        let _ = tokio::task::spawn_blocking(move || {
            drop(brokers);
            drop(pg);
        })
        .await;
    }
}

async fn start_brokers(name: &str, cluster: bool) -> anyhow::Result<Vec<RabbitNode>> {
    let name = name.to_owned();
    Ok(tokio::task::spawn_blocking(move || {
        if !cluster {
            return vec![RabbitNode::start(&name)];
        }
        let nodes: Vec<RabbitNode> = (1..=3)
            .map(|i| RabbitNode::start(&format!("{name}{i}")))
            .collect();
        for node in &nodes[1..] {
            node.join(&nodes[0]);
        }
        nodes
    })
    .await?)
}

/// The tenant, `users` people `c1..=c<users>` with a verified SMS number each, and a tenant
/// admin's API key (returned).
async fn seed(pool: &PgPool, users: u32) -> anyhow::Result<String> {
    let tenant = tenants::create(pool, TENANT, "Chaos").await?;
    sqlx::query(
        "INSERT INTO users (id, tenant_id, external_id)
         SELECT gen_random_uuid(), $1, 'c' || i FROM generate_series(1, $2::bigint) AS i",
    )
    .bind(tenant.id)
    .bind(i64::from(users))
    .execute(pool)
    .await
    .context("seed users")?;
    // Imported as verified: the suite is the operator who vouches for them (issue #17).
    sqlx::query(
        "INSERT INTO addresses (id, tenant_id, user_id, channel, kind, value, verified,
                                verified_at, verified_how, verified_by)
         SELECT gen_random_uuid(), tenant_id, id, 'sms', 'sms',
                '+4179' || lpad(substr(external_id, 2), 7, '0'), true, now(), 'import', 'chaos'
         FROM users WHERE tenant_id = $1",
    )
    .bind(tenant.id)
    .execute(pool)
    .await
    .context("seed addresses")?;
    let (_, key) = api_keys::create(
        pool,
        api_keys::NewKey {
            tenant_id: Some(tenant.id),
            role: messaging_core::Role::TenantAdmin,
            user_id: None,
            name: "chaos",
            created_by: "chaos",
        },
    )
    .await?;
    Ok(key)
}

fn env(key: &str, value: impl Into<String>) -> (String, String) {
    (key.to_owned(), value.into())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
