//! Configuration: documented defaults, then an optional TOML file (`HERALD_CONFIG`), then
//! `HERALD_*` environment variables, where `__` separates sections:
//! `HERALD_AMQP__URL` sets `amqp.url`.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// A value that must never be printed: passwords, tokens, URLs with credentials.
/// `Debug` and `Display` show `[redacted]`; only [`Secret::expose`] gives the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Secret)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

/// Loads `T` from the layered sources. `defaults` are per-service defaults for single keys
/// (`("http.addr", "127.0.0.1:9102")`) that differ from the struct's own.
pub fn load<T: DeserializeOwned>(defaults: &[(&str, &str)]) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    for (key, value) in defaults {
        figment = figment.merge(Serialized::default(key, value));
    }
    if let Ok(path) = std::env::var("HERALD_CONFIG") {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment
        .merge(Env::prefixed("HERALD_").split("__"))
        .extract()
        .map_err(|e| ConfigError(Box::new(e)))
}

/// For text settings that may look like numbers. figment reads `HERALD_SMS__FROM=+15005550006`
/// as the integer 15005550006 (dropping the `+`); this accepts numbers and keeps their digits,
/// so the field's own validation can say what is wrong (and that the value must be quoted).
pub fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        Plain(String),
        Signed(i64),
        Unsigned(u64),
        Float(f64),
    }
    Ok(Option::<Text>::deserialize(d)?.map(|t| match t {
        Text::Plain(s) => s,
        Text::Signed(n) => n.to_string(),
        Text::Unsigned(n) => n.to_string(),
        Text::Float(n) => n.to_string(),
    }))
}

/// Which RabbitMQ queue type work queues get. Quorum is the default and the only one that
/// survives a node loss; classic is there for brokers without quorum support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Quorum,
    Classic,
}

/// `amqp.*`: the broker connection and the runtime's queue settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost`. A secret: it holds the password.
    pub url: Secret<String>,
    /// More nodes of the same cluster, `host:port` comma-separated (`rabbit-2:5672,
    /// rabbit-3:5672`), reached with the URL's user, password, vhost and scheme. A service
    /// connects to the node it last reached, and when that one fails, to the next that
    /// answers. Empty: the URL's node only.
    pub nodes: String,
    /// How long one connection attempt to one node may take before the next node is tried
    /// (a node cut off by the network does not refuse, it just never answers).
    pub connect_timeout_ms: u64,
    /// Every exchange and queue name starts with this (`herald.send.email`).
    pub prefix: String,
    pub queue_type: QueueType,
    /// Retry delay levels in milliseconds, one delay queue each. A retry waits in the
    /// smallest level at least as long as asked, and longer waits chain through the largest.
    pub delays_ms: Vec<u64>,
    /// Redeliveries of one message (a consumer died holding it) before the broker
    /// dead-letters it: what stops a poison message from crash-looping a service.
    pub delivery_limit: u32,
    /// Messages the broker hands one consumer before acks.
    pub prefetch: u16,
    /// Messages one consumer works on at once.
    pub concurrency: usize,
    /// Retries of one message through the delay queues before it is dead-lettered.
    pub max_attempts: u32,
    /// Waits of one message without being handled (deferrals, and waits longer than the
    /// largest delay level) before it is dead-lettered (`too_many_deferrals`).
    pub max_deferrals: u32,
    /// The longest a message may ask to wait (`herald-not-before`); one that names a later
    /// time is dead-lettered (`not_before_too_far`). Herald sets that header itself, but a
    /// producer can too, and a far-future value would otherwise cycle through the delay
    /// queues forever.
    pub max_defer_secs: u64,
    /// How long a publish keeps trying through reconnects before it reports the broker down.
    pub publish_timeout_ms: u64,
    /// Upper bound of the reconnect backoff.
    pub reconnect_max_ms: u64,
    /// Herald's own broker users besides this service's (comma-separated): messages they
    /// publish count as Herald's (delivery events, retries that keep their first producer).
    /// Empty: this service's user only, the usual setup with one user for all services.
    pub service_users: String,
    /// How long a consumer waits for its in-flight handlers when its connection is lost or
    /// the service stops. Past it, they are given up: their messages were not acked, so the
    /// broker delivers them again. Keep it below the orchestrator's grace period.
    pub drain_deadline_ms: u64,
    /// The longest one handler may take with one message; past it the message is retried
    /// (the work is idempotent), so a handler stuck on a dead dependency does not hold a
    /// consumer slot for ever.
    pub handler_timeout_ms: u64,
    /// The largest AMQP frame this client accepts (bytes; 0: the broker's, 128 KiB for
    /// RabbitMQ). lapin keeps two zero-filled buffers of 32 frames per connection, so
    /// RabbitMQ's 128 KiB cost 8 MiB of resident memory per connection; Herald's messages
    /// are a few KiB, and a larger one is simply sent in more frames.
    pub frame_max: u32,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f".into()),
            nodes: String::new(),
            connect_timeout_ms: 5_000,
            prefix: "herald".into(),
            queue_type: QueueType::Quorum,
            delays_ms: vec![1_000, 5_000, 30_000, 120_000, 600_000, 3_600_000],
            delivery_limit: 20,
            prefetch: 64,
            concurrency: 32,
            max_attempts: 30,
            max_deferrals: 10_000,
            max_defer_secs: 24 * 3600,
            publish_timeout_ms: 60_000,
            reconnect_max_ms: 10_000,
            service_users: String::new(),
            drain_deadline_ms: 20_000,
            handler_timeout_ms: 300_000,
            frame_max: DEFAULT_FRAME_MAX,
        }
    }
}

/// 16 KiB: 1 MiB of lapin's buffers per connection instead of 8.
pub const DEFAULT_FRAME_MAX: u32 = 16_384;

impl AmqpConfig {
    /// The frame size to ask the broker for, within AMQP's bounds; `None`: the broker's.
    pub fn frame_max(&self) -> Option<u32> {
        (self.frame_max != 0).then(|| self.frame_max.clamp(4_096, 131_072))
    }

    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }

    /// The broker user in the URL (RabbitMQ's default `guest` when it names none): the
    /// `user_id` this service's messages carry, which the broker checks.
    pub fn username(&self) -> String {
        self.url
            .expose()
            .parse::<lapin::uri::AMQPUri>()
            .map(|uri| uri.authority.userinfo.username)
            .unwrap_or_else(|_| "guest".to_owned())
    }

    /// Herald's broker users: this service's and `service_users`.
    pub fn service_users(&self) -> std::collections::BTreeSet<String> {
        self.service_users
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .chain(std::iter::once(self.username()))
            .collect()
    }

    /// The URL with its password replaced, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url.expose())
    }

    /// Every node to connect to: the URL's first, then [`AmqpConfig::nodes`] in their order,
    /// each once.
    pub fn node_uris(&self) -> Result<Vec<lapin::uri::AMQPUri>, String> {
        let first: lapin::uri::AMQPUri = self
            .url
            .expose()
            .parse()
            .map_err(|e| format!("amqp.url: {e}"))?;
        let mut uris = vec![first.clone()];
        for node in self
            .nodes
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            let (host, port) = parse_node(node, first.authority.port)
                .ok_or_else(|| format!("amqp.nodes: `{node}` is not host:port"))?;
            let mut uri = first.clone();
            uri.authority.host = host;
            uri.authority.port = port;
            if !uris.iter().any(|u| {
                u.authority.host == uri.authority.host && u.authority.port == uri.authority.port
            }) {
                uris.push(uri);
            }
        }
        Ok(uris)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }
}

/// `host:port`, `host` (the URL's port), `[v6]:port` or `[v6]`.
fn parse_node(node: &str, default_port: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = node.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (host.to_owned(), port)
    } else {
        match node.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), port.parse().ok()?),
            None => (node.to_owned(), default_port),
        }
    };
    let valid = !host.is_empty() && !host.contains(['/', '@', ' ', ',']) && port != 0;
    valid.then_some((host, port))
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The last `@`: a password may hold one (written unescaped, as people do), and splitting
    // at the first would print the rest of the password as if it were the host.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// `http.*`: where the health and metrics endpoints listen.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    /// Where `/metrics` and the detailed `/readyz` are served instead of `addr`, for a
    /// service whose `addr` is public (the API). Then `addr` answers `/readyz` with ready or
    /// not ready only, no component details (they name hosts and errors), and has no
    /// `/metrics`. Unset: everything on `addr`.
    pub admin_addr: Option<SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 9100)),
            admin_addr: None,
        }
    }
}

/// `log.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A tracing filter such as `info,herald_runtime=debug`. `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            filter: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// What every service reads: the broker, its health endpoint, its logs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct BaseConfig {
    pub amqp: AmqpConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
}

#[cfg(test)]
// figment::Jail's closure returns figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn nodes_share_the_urls_credentials_and_vhost() {
        let config = AmqpConfig {
            url: Secret::new("amqps://svc:pw@rabbit-1:5671/prod".into()),
            nodes: " rabbit-2:5672, rabbit-3 ,[::1]:5673,rabbit-1:5671,".into(),
            ..AmqpConfig::default()
        };
        let uris = config.node_uris().unwrap();
        let nodes: Vec<(String, u16)> = uris
            .iter()
            .map(|u| (u.authority.host.clone(), u.authority.port))
            .collect();
        assert_eq!(
            nodes,
            [
                ("rabbit-1".to_owned(), 5671),
                ("rabbit-2".to_owned(), 5672),
                ("rabbit-3".to_owned(), 5671),
                ("::1".to_owned(), 5673),
            ]
        );
        assert!(uris.iter().all(|u| u.authority.userinfo.username == "svc"
            && u.authority.userinfo.password == "pw"
            && u.vhost == "prod"));
        for bad in ["rabbit-2:x", "user@rabbit:5672", "[::1", ":5672"] {
            let config = AmqpConfig {
                nodes: bad.into(),
                ..AmqpConfig::default()
            };
            assert!(config.node_uris().is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2".to_owned());
        assert_eq!(format!("{secret:?} {secret}"), "[redacted] [redacted]");
        let config = AmqpConfig::default();
        assert!(!format!("{config:?}").contains("guest:guest"));
    }

    #[test]
    fn the_frame_size_stays_within_amqps_bounds() {
        let with = |frame_max| AmqpConfig {
            frame_max,
            ..AmqpConfig::default()
        };
        assert_eq!(AmqpConfig::default().frame_max(), Some(16_384));
        assert_eq!(with(0).frame_max(), None);
        assert_eq!(with(1).frame_max(), Some(4_096));
        assert_eq!(with(10_000_000).frame_max(), Some(131_072));
    }

    #[test]
    fn urls_lose_their_password_in_logs() {
        assert_eq!(
            redact_url("amqp://herald:s3cret@mq:5672/%2f"),
            "amqp://herald:***@mq:5672/%2f"
        );
        assert_eq!(redact_url("amqp://mq:5672"), "amqp://mq:5672");
        assert_eq!(
            redact_url("amqp://herald:p@ss:w@rd@mq:5672/%2f"),
            "amqp://herald:***@mq:5672/%2f",
            "a password with @ in it never shows"
        );
    }

    #[test]
    fn environment_overrides_defaults_with_double_underscore_sections() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_AMQP__PREFIX", "staging");
            jail.set_env("HERALD_AMQP__DELAYS_MS", "[100, 200]");
            jail.set_env("HERALD_LOG__FORMAT", "json");
            let config: BaseConfig = load(&[("http.addr", "127.0.0.1:9200")]).unwrap();
            assert_eq!(config.amqp.prefix, "staging");
            assert_eq!(config.amqp.delays_ms, vec![100, 200]);
            assert_eq!(config.log.format, LogFormat::Json);
            assert_eq!(config.http.addr.port(), 9200);
            jail.set_env("HERALD_HTTP__ADDR", "127.0.0.1:9300");
            let config: BaseConfig = load(&[("http.addr", "127.0.0.1:9200")]).unwrap();
            assert_eq!(config.http.addr.port(), 9300);
            Ok(())
        });
    }

    #[test]
    fn a_typo_in_a_section_is_an_error_not_a_silent_default() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HERALD_AMQP__PREFETCHH", "5");
            let err = load::<BaseConfig>(&[]).unwrap_err().to_string();
            assert!(err.contains("prefetchh"), "{err}");
            Ok(())
        });
    }
}
