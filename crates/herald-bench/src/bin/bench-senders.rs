//! The senders' benchmark (`just bench-senders`).
//!
//! Runs the real `sender-email` and `sender-sms` release binaries as child processes against
//! the real broker, and measures:
//! - email throughput: N send jobs published -> N `delivered` events, through a local SMTP
//!   sink (postfix's `smtp-sink`), and in the same run the same N mails sent by Apprise
//!   (Python) to the same sink, and the sink's ceiling (postfix's `smtp-source` with as many
//!   sessions as Herald's pool): the figures and Herald's ratio to each;
//! - SMS throughput against the fake Twilio-compatible provider;
//! - Telegram and Discord throughput against their fakes, with the rate limits raised;
//! - Telegram and Discord with their default limits, against fakes that enforce the
//!   providers' published limits (sliding windows: Telegram 30/s per bot and 1/s per chat,
//!   Discord 50 requests/s and 5 messages per 5 s per channel): the rate the provider saw per
//!   bot and per chat over a 30 s window, as a share of the ceiling, and the 429s it answered;
//! - Teams against the fake Bot Framework: throughput with the limits raised, then at the
//!   default limits against the fake enforcing the published ones (30 requests/s per app;
//!   per conversation 7/1 s, 8/2 s, 60/30 s, 1,800/h, all sliding windows);
//! - WebSocket: 10,000 client connections on one replica (its RSS), then jobs at 2,000/s
//!   to them: the time from a job's publish to the client's frame (p50, p99), beside the
//!   broker's own publish-to-consume time at the same pace;
//! - XMPP against the tests' local Prosody: messages/s to one JID and into one room, and the
//!   time the bot takes to create and configure a pool of 50 help-desk rooms;
//! - each sender's resident memory when idle and its peak while loaded.
//!
//! For the throughput figures the rate limits are raised out of the way: they are policy,
//! and those figures measure capacity.

// A benchmark's fixed inputs are valid by construction; failing on them is a broken benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use herald_bench::stats;
use herald_runtime::amqp::{Broker, Message, Publisher, Topology};
use herald_runtime::config::{AmqpConfig, Secret};
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use herald_testkit::discord_interactions::InteractionClient;
use herald_testkit::fake_discord::{DiscordLimits, FakeDiscord};
use herald_testkit::fake_sms::FakeSms;
use herald_testkit::fake_teams::FakeTeams;
use herald_testkit::fake_telegram::{FakeTelegram, SentMessage, TelegramLimits};
use herald_testkit::prosody::Prosody;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use messaging_core::events::{RoomChange, RoomEvent, RoomRoster};
use messaging_core::job::{RenderedContent, SendJob};
use messaging_core::topology::routing;
use messaging_core::values::{E164, Email, TeamsChat, TenantKey, WsKey};
use messaging_core::{Address, Channel, EnvelopeVersion};

#[derive(Parser)]
struct Args {
    /// Mails (and texts) per run.
    #[arg(long, default_value_t = 2_000)]
    messages: usize,
    /// The window over which the chat senders' rates at their default limits are measured.
    #[arg(long, default_value_t = 30)]
    window_secs: u64,
    /// Only these channels (`--only telegram --only discord`); all when not given.
    #[arg(long)]
    only: Vec<Channel>,
    /// WebSocket clients held open on one replica.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_runtime::install_crypto_provider();
    let args = Args::parse();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();

    let wanted = |channel: Channel| args.only.is_empty() || args.only.contains(&channel);
    println!("bench-senders: {} messages per run", args.messages);
    let mut memory: Vec<(&str, Run)> = Vec::new();

    if wanted(Channel::Email) {
        let sink = SmtpSink::start()?;
        println!("SMTP sink: postfix smtp-sink on port {}", sink.port);
        let email = run_sender(
            &bin_dir,
            Channel::Email,
            &addresses(Channel::Email, args.messages),
            Load::Raised,
            &[
                ("HERALD_SMTP__HOST", "127.0.0.1".into()),
                ("HERALD_SMTP__PORT", sink.port.to_string()),
                ("HERALD_SMTP__TLS", "none".into()),
                ("HERALD_SMTP__FROM", "Herald <noreply@herald.test>".into()),
            ],
        )
        .await
        .context("email run")?;
        // The same mails through Apprise.
        let apprise = apprise_rate(args.messages, sink.port).context("apprise run")?;
        // The sink's own ceiling: postfix's load generator with as many sessions as Herald's
        // pool holds, as issue #16 measured it (a connection per mail), and with each session
        // keeping its connection, as the pool does (-d).
        let ceiling_mails = args.messages.max(CEILING_MAILS);
        let ceiling = smtp_source_rate(ceiling_mails, SMTP_POOL, sink.port, false)
            .context("smtp-source run")?;
        let kept = smtp_source_rate(ceiling_mails, SMTP_POOL, sink.port, true)
            .context("smtp-source -d run")?;
        println!("email  herald:  {:>8.0} mails/s", email.rate);
        println!(
            "email  smtp-source: {ceiling:>4.0} mails/s ({ceiling_mails} mails of 600 bytes, {SMTP_POOL} sessions, a connection per mail: the ceiling of issue #16)"
        );
        let share = email.rate / ceiling;
        println!(
            "ratio herald/smtp-source: {share:.2} (target >= {CEILING_TARGET}: {})",
            if share >= CEILING_TARGET {
                "met"
            } else {
                "MISSED"
            }
        );
        println!(
            "email  smtp-source -d: {kept:>.0} mails/s (the same, each session keeping its connection); ratio herald/that: {:.2}",
            email.rate / kept
        );
        println!(
            "email  apprise: {:>8.0} mails/s (its default 5.5 s pause between mails switched off)",
            apprise
        );
        println!("ratio herald/apprise: {:.1}", email.rate / apprise);
        memory.push(("sender-email", email));
    }

    if wanted(Channel::Sms) {
        // SMS through Herald, against the fake provider.
        let fake = FakeSms::start("ACbench", "token").await;
        let sms = run_sender(
            &bin_dir,
            Channel::Sms,
            &addresses(Channel::Sms, args.messages),
            Load::Raised,
            &[
                ("HERALD_SMS__BASE_URL", fake.base_url()),
                ("HERALD_SMS__ACCOUNT_SID", "ACbench".into()),
                ("HERALD_SMS__AUTH_TOKEN", "token".into()),
                ("HERALD_SMS__FROM", "\"+15005550006\"".into()),
            ],
        )
        .await
        .context("sms run")?;
        anyhow::ensure!(
            fake.received().len() == args.messages,
            "the fake provider got {} texts",
            fake.received().len()
        );
        println!("sms    herald:  {:>8.0} texts/s (fake provider)", sms.rate);
        memory.push(("sender-sms", sms));
    }

    // Telegram and Discord: capacity, then the default limits against enforcing fakes.
    if wanted(Channel::Telegram) {
        let telegram = telegram_runs(&bin_dir, args.messages, args.window_secs).await?;
        telegram.print();
        memory.push(("sender-telegram", telegram.capacity));
    }
    if wanted(Channel::Discord) {
        let discord = discord_runs(&bin_dir, args.messages, args.window_secs).await?;
        discord.print();
        memory.push(("sender-discord", discord.capacity));
    }

    if wanted(Channel::Teams) {
        let teams = teams_runs(&bin_dir, args.messages, args.window_secs).await?;
        teams.print();
        memory.push(("sender-teams", teams.capacity));
    }

    if wanted(Channel::Websocket) {
        let websocket = websocket_runs(
            &bin_dir,
            args.connections,
            2_000.0,
            args.messages.max(10_000),
        )
        .await?;
        websocket.print();
    }

    if wanted(Channel::Xmpp) {
        let xmpp = xmpp_runs(&bin_dir, args.messages).await?;
        xmpp.print();
        memory.push(("sender-xmpp", xmpp.to_jid));
    }

    for (name, run) in &memory {
        println!(
            "memory {name:<16} idle {:>5.1} MiB (heap and stacks {:>5.1}, mapped files {:>5.1}), peak loaded {:>5.1} MiB",
            run.idle_mib, run.idle_anon_mib, run.idle_file_mib, run.peak_mib
        );
    }
    Ok(())
}

/// A chat sender's figures: capacity with limits raised, and one run at the default limits.
struct ChatFigures {
    channel: Channel,
    capacity: Run,
    /// What the provider counts: Telegram messages, Discord requests.
    unit: &'static str,
    per_bot: f64,
    per_bot_ceiling: f64,
    per_chat: f64,
    per_chat_ceiling: f64,
    too_many_requests: usize,
    window: Duration,
}

impl ChatFigures {
    fn print(&self) {
        let channel = self.channel;
        println!(
            "{channel:<8} herald:  {:>8.0} messages/s (fake provider, limits raised)",
            self.capacity.rate
        );
        println!(
            "{channel:<8} default limits over {} s: per bot {:.2} {}/s = {:.1}% of {}; per chat {:.3}/s = {:.1}% of {}; 429s at the fake: {}",
            self.window.as_secs(),
            self.per_bot,
            self.unit,
            100.0 * self.per_bot / self.per_bot_ceiling,
            self.per_bot_ceiling,
            self.per_chat,
            100.0 * self.per_chat / self.per_chat_ceiling,
            self.per_chat_ceiling,
            self.too_many_requests,
        );
    }
}

/// The rate the provider saw over the window that starts at its first accepted request
/// (the load outlasts the window, so the sender is busy all through it).
fn window_rate(times: Vec<Instant>, window: Duration) -> f64 {
    let Some(first) = times.iter().min().copied() else {
        return 0.0;
    };
    let inside = times
        .iter()
        .filter(|at| at.duration_since(first) < window)
        .count();
    inside as f64 / window.as_secs_f64()
}

/// Chat ids for the per-bot figure: more distinct chats than the bot can reach in the window,
/// so no chat's own limit binds.
fn distinct_chats(channel: Channel, n: usize) -> Vec<Address> {
    (0..n)
        .map(|i| Address::parse(channel, &(1_000_000 + i).to_string()).expect("valid"))
        .collect()
}

async fn telegram_runs(
    bin_dir: &std::path::Path,
    n: usize,
    window_secs: u64,
) -> anyhow::Result<ChatFigures> {
    const TOKEN: &str = "424242:bench-token";
    let env = |fake: &FakeTelegram| {
        vec![
            ("HERALD_TELEGRAM__BOT_TOKEN", TOKEN.to_owned()),
            ("HERALD_TELEGRAM__API_URL", fake.api_url()),
        ]
    };
    let fake = FakeTelegram::start(TOKEN).await;
    let jobs = distinct_chats(Channel::Telegram, n);
    let capacity = run_sender(bin_dir, Channel::Telegram, &jobs, Load::Raised, &env(&fake))
        .await
        .context("telegram run")?;
    anyhow::ensure!(fake.sent().len() == n, "the fake got {}", fake.sent().len());

    // At the default limits, against a fake that counts as Telegram may: one run to many
    // chats (the bot's rate), one to a single chat (the chat's rate).
    let window = Duration::from_secs(window_secs);
    let (per_bot, per_chat) = (30.0, 1.0);
    let mut too_many_requests = 0;
    let mut default_run = async |jobs: Vec<Address>| -> anyhow::Result<Vec<SentMessage>> {
        let fake = FakeTelegram::start(TOKEN).await;
        fake.enforce_limits(TelegramLimits::default());
        run_sender(
            bin_dir,
            Channel::Telegram,
            &jobs,
            Load::Default { window },
            &env(&fake),
        )
        .await
        .context("telegram run at the default limits")?;
        too_many_requests += fake.too_many_requests_answered();
        if std::env::var_os("BENCH_DEBUG").is_some() {
            let requests = fake.requests_of("sendmessage");
            let start = requests.first().map(|r| r.at);
            let times: Vec<String> = requests
                .iter()
                .take(40)
                .map(|r| {
                    format!(
                        "{:.0}",
                        start.map_or(0.0, |s| r.at.duration_since(s).as_secs_f64() * 1000.0)
                    )
                })
                .collect();
            eprintln!("telegram first sends (ms): {}", times.join(" "));
            for r in requests.iter().filter(|r| r.status != Some(200)) {
                eprintln!(
                    "telegram {:.3}s chat {} -> {:?}",
                    start.map_or(0.0, |s| r.at.duration_since(s).as_secs_f64()),
                    r.params["chat_id"],
                    r.status
                );
            }
        }
        Ok(fake.sent())
    };
    let many = default_run(distinct_chats(
        Channel::Telegram,
        outlasting(per_bot, window),
    ))
    .await?;
    let one = default_run(one_chat(Channel::Telegram, outlasting(per_chat, window))).await?;
    Ok(ChatFigures {
        channel: Channel::Telegram,
        capacity,
        unit: "messages",
        per_bot: window_rate(many.iter().map(|m| m.at).collect(), window),
        per_bot_ceiling: per_bot,
        per_chat: window_rate(one.iter().map(|m| m.at).collect(), window),
        per_chat_ceiling: per_chat,
        too_many_requests,
        window,
    })
}

async fn discord_runs(
    bin_dir: &std::path::Path,
    n: usize,
    window_secs: u64,
) -> anyhow::Result<ChatFigures> {
    const TOKEN: &str = "bench-discord-token";
    const APPLICATION: u64 = 424_242;
    let env = |fake: &FakeDiscord| {
        vec![
            ("HERALD_DISCORD__BOT_TOKEN", TOKEN.to_owned()),
            ("HERALD_DISCORD__APPLICATION_ID", APPLICATION.to_string()),
            // Nothing here posts interactions; the key only has to be a valid one.
            (
                "HERALD_DISCORD__PUBLIC_KEY",
                InteractionClient::new(APPLICATION).public_key_hex(),
            ),
            ("HERALD_DISCORD__API_PROXY", fake.proxy_url()),
        ]
    };
    let fake = FakeDiscord::start(TOKEN, APPLICATION).await;
    let jobs = distinct_chats(Channel::Discord, n);
    let mut raised = env(&fake);
    // The sender's own request bucket too (Discord counts requests, the runtime jobs).
    raised.push(("HERALD_DISCORD__REQUESTS_PER_SECOND", "1000000".into()));
    let capacity = run_sender(bin_dir, Channel::Discord, &jobs, Load::Raised, &raised)
        .await
        .context("discord run")?;
    anyhow::ensure!(fake.sent().len() == n, "the fake got {}", fake.sent().len());

    // At the default limits, against a fake that counts as Discord does: one run to many
    // users (the bot's requests, a first message to a user also opening the DM channel),
    // one to a single user (that DM channel's rate).
    let window = Duration::from_secs(window_secs);
    let (per_bot, per_chat) = (50.0, 1.0);
    let mut too_many_requests = 0;
    let mut default_run = async |jobs: Vec<Address>| -> anyhow::Result<Vec<Instant>> {
        let fake = FakeDiscord::start(TOKEN, APPLICATION).await;
        fake.enforce_limits(DiscordLimits::default());
        run_sender(
            bin_dir,
            Channel::Discord,
            &jobs,
            Load::Default { window },
            &env(&fake),
        )
        .await
        .context("discord run at the default limits")?;
        too_many_requests += fake.too_many_requests_answered();
        // The jobs' requests (opening DMs, messages), not the bot's start-up ones (its
        // user, its commands), which come seconds before the first job.
        Ok(fake
            .requests()
            .iter()
            .filter(|r| r.status == Some(200) && r.method == "POST")
            .filter(|r| r.path == "/users/@me/channels" || r.path.ends_with("/messages"))
            .map(|r| r.at)
            .collect())
    };
    let many = default_run(distinct_chats(
        Channel::Discord,
        outlasting(per_bot, window),
    ))
    .await?;
    let one = default_run(one_chat(Channel::Discord, outlasting(per_chat, window))).await?;
    Ok(ChatFigures {
        channel: Channel::Discord,
        capacity,
        unit: "requests",
        per_bot: window_rate(many, window),
        per_bot_ceiling: per_bot,
        // The single user's requests, but its first (opening the DM) is not a message.
        per_chat: window_rate(one.into_iter().skip(1).collect(), window),
        per_chat_ceiling: per_chat,
        too_many_requests,
        window,
    })
}

/// Teams conversations on the fake Bot Connector.
fn conversations(fake: &FakeTeams, n: usize) -> Vec<Address> {
    (0..n)
        .map(|i| {
            let chat = TeamsChat::new(&fake.service_url(), &format!("a:1bench{i}")).expect("valid");
            Address::Teams(chat)
        })
        .collect()
}

async fn teams_runs(
    bin_dir: &std::path::Path,
    n: usize,
    window_secs: u64,
) -> anyhow::Result<ChatFigures> {
    const APP_ID: &str = "bench-app";
    const PASSWORD: &str = "bench-secret";
    let env = |fake: &FakeTeams| {
        vec![
            ("HERALD_TEAMS__APP_ID", APP_ID.to_owned()),
            ("HERALD_TEAMS__APP_PASSWORD", PASSWORD.to_owned()),
            (
                "HERALD_TEAMS__TOKEN_URL",
                fake.token_url("botframework.com"),
            ),
            (
                "HERALD_TEAMS__OPENID_METADATA_URL",
                fake.openid_metadata_url(),
            ),
            ("HERALD_TEAMS__SERVICE_HOSTS", "127.0.0.1".to_owned()),
        ]
    };
    let fake = FakeTeams::start(APP_ID, PASSWORD).await;
    let mut raised = env(&fake);
    // The sender's own request bucket too (the Bot Connector counts requests).
    raised.push(("HERALD_TEAMS__REQUESTS_PER_SECOND", "1000000".into()));
    let capacity = run_sender(
        bin_dir,
        Channel::Teams,
        &conversations(&fake, n),
        Load::Raised,
        &raised,
    )
    .await
    .context("teams run")?;
    anyhow::ensure!(
        fake.received().len() == n,
        "the fake got {}",
        fake.received().len()
    );

    // At the default limits, against a fake enforcing the published ones as sliding
    // windows: many conversations (the app's 30/s), then one (its 60 in 30 s: within a
    // window of 30 s the ceiling is 2/s, and only a window of an hour brings it to 0.5/s).
    let window = Duration::from_secs(window_secs);
    let (per_app, per_conversation) = (30.0, 2.0);
    let mut too_many_requests = 0;
    let mut default_run = async |many: bool, count: usize| -> anyhow::Result<Vec<Instant>> {
        let fake = FakeTeams::start(APP_ID, PASSWORD).await;
        fake.enforce_limits();
        let jobs = if many {
            conversations(&fake, count)
        } else {
            vec![conversations(&fake, 1).remove(0); count]
        };
        run_sender(
            bin_dir,
            Channel::Teams,
            &jobs,
            Load::Default { window },
            &env(&fake),
        )
        .await
        .context("teams run at the default limits")?;
        too_many_requests += fake.throttled();
        Ok(fake.received().iter().map(|r| r.at).collect())
    };
    let many = default_run(true, outlasting(per_app, window)).await?;
    let one = default_run(false, outlasting(per_conversation, window)).await?;
    Ok(ChatFigures {
        channel: Channel::Teams,
        capacity,
        unit: "requests",
        per_bot: window_rate(many, window),
        per_bot_ceiling: per_app,
        per_chat: window_rate(one, window),
        per_chat_ceiling: per_conversation,
        too_many_requests,
        window,
    })
}

/// WebSocket: many connections on one replica, and the time from a job to its client frame.
struct WebsocketFigures {
    connections: usize,
    connect: Duration,
    idle_mib: f64,
    connected_mib: f64,
    peak_mib: f64,
    latency: Latencies,
    broker: Latencies,
}

/// Latencies of `count` messages offered at `offered` per second.
struct Latencies {
    offered: f64,
    achieved: f64,
    count: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl Latencies {
    fn of(offered: f64, achieved: f64, mut values: Vec<Duration>) -> Latencies {
        values.sort();
        Latencies {
            offered,
            achieved,
            count: values.len(),
            p50: stats::percentile(&values, 0.50),
            p99: stats::percentile(&values, 0.99),
            max: values.last().copied().unwrap_or_default(),
        }
    }
}

impl WebsocketFigures {
    fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "websocket {} connections on one replica, connected in {:.1} s: RSS {:.1} MiB (idle before {:.1} MiB, peak while sending {:.1} MiB)",
            self.connections,
            self.connect.as_secs_f64(),
            self.connected_mib,
            self.idle_mib,
            self.peak_mib
        );
        println!(
            "websocket job -> client frame, {} messages at {:.0}/s offered ({:.0}/s achieved): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.latency.count,
            self.latency.offered,
            self.latency.achieved,
            ms(self.latency.p50),
            ms(self.latency.p99),
            ms(self.latency.max)
        );
        println!(
            "websocket baseline, the broker's own round trip (publish with confirm -> consume) at {:.0}/s: p50 {:.1} ms, p99 {:.1} ms; Herald's p99 = {:.1} x the broker's",
            self.broker.offered,
            ms(self.broker.p50),
            ms(self.broker.p99),
            self.latency.p99.as_secs_f64() / self.broker.p99.as_secs_f64().max(1e-6)
        );
    }
}

async fn websocket_runs(
    bin_dir: &std::path::Path,
    connections: usize,
    rate: f64,
    messages: usize,
) -> anyhow::Result<WebsocketFigures> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Frame;

    const SECRET: &str = "bench-websocket-secret";
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let env = vec![
        ("HERALD_WEBSOCKET__TOKEN_SECRET", SECRET.to_owned()),
        ("HERALD_HTTP__ADDR", format!("127.0.0.1:{port}")),
    ];
    let sender = Started::start(bin_dir, Channel::Websocket, Load::Raised, &env, &[]).await?;
    let pid = sender.child.0.id();
    let now = chrono::Utc::now().timestamp();
    let token = herald_jwks::ws_token::issue(
        SECRET,
        herald_jwks::ws_token::WsClaims {
            iss: String::new(),
            aud: String::new(),
            tenant: "acme".into(),
            ns: vec!["bench".into()],
            iat: now,
            exp: now + 3600,
            jti: "bench".into(),
        },
    )?;

    // The clients: each registers one address, acknowledges what it gets, and reports when.
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<(uuid::Uuid, Instant)>();
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel::<()>();
    let opening = Arc::new(tokio::sync::Semaphore::new(200));
    let mut clients = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..connections {
        let (token, arrived_tx, ready_tx, opening) = (
            token.clone(),
            arrived_tx.clone(),
            ready_tx.clone(),
            opening.clone(),
        );
        clients.spawn(async move {
            let permit = opening.acquire_owned().await?;
            let (mut ws, _) =
                tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws")).await?;
            let hello = serde_json::json!({"type": "hello", "token": token, "addresses": [format!("bench/{i}")]});
            ws.send(Frame::Text(hello.to_string().into())).await?;
            let Some(Ok(Frame::Text(first))) = ws.next().await else {
                anyhow::bail!("no ready frame");
            };
            anyhow::ensure!(first.contains("\"ready\""), "refused: {first}");
            drop(permit);
            let _ = ready_tx.send(());
            while let Some(frame) = ws.next().await {
                let Frame::Text(text) = frame? else { continue };
                let at = Instant::now();
                let value: serde_json::Value = serde_json::from_str(&text)?;
                let Some(id) = value["deliveryId"].as_str().and_then(|s| uuid::Uuid::parse_str(s).ok()) else {
                    continue;
                };
                let _ = arrived_tx.send((id, at));
                let ack = serde_json::json!({"type": "ack", "deliveryId": id});
                ws.send(Frame::Text(ack.to_string().into())).await?;
            }
            anyhow::Ok(())
        });
    }
    drop(ready_tx);
    let mut connected = 0;
    while connected < connections {
        match tokio::time::timeout(Duration::from_secs(120), ready.recv()).await {
            Ok(Some(())) => connected += 1,
            _ => {
                if let Some(Ok(Err(error))) = clients.try_join_next() {
                    bail!("websocket: {connected} of {connections} clients connected: {error}");
                }
                bail!("websocket: {connected} of {connections} clients connected in time");
            }
        }
    }
    let connect = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected_mib = rss_mib(pid)?;

    // Jobs paced at `rate`, each to the next client; latency from the moment its publish
    // began to the client's frame.
    let publisher = Publisher::new(Broker::new(sender.config.clone(), "bench"), "bench");
    let mut sent = HashMap::with_capacity(messages);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut publishes = tokio::task::JoinSet::new();
    let offering = Instant::now();
    let exchange = sender.names.send_exchange();
    for i in 0..messages {
        ticks.tick().await;
        let job = job(
            Address::Websocket(WsKey::parse(&format!("bench/{}", i % connections)).expect("valid")),
            i,
        );
        sent.insert(job.delivery_id, Instant::now());
        let (publisher, exchange) = (publisher.clone(), exchange.clone());
        publishes.spawn(async move {
            let body = serde_json::to_vec(&job)?;
            publisher
                .publish(&Message::new(exchange, Channel::Websocket.as_str(), &body))
                .await?;
            anyhow::Ok(())
        });
        while let Some(done) = publishes.try_join_next() {
            done??;
        }
    }
    let offered_for = offering.elapsed();
    while let Some(done) = publishes.join_next().await {
        done??;
    }
    let mut latencies = Vec::with_capacity(messages);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = std::collections::HashSet::new();
    while seen.len() < messages {
        let Ok(Some((id, at))) = tokio::time::timeout_at(deadline, arrived.recv()).await else {
            bail!(
                "websocket: {} of {messages} messages reached a client",
                seen.len()
            );
        };
        if let Some(start) = sent.get(&id)
            && seen.insert(id)
        {
            latencies.push(at.duration_since(*start));
        }
    }
    let peak_mib = peak_rss_mib(pid)?;
    clients.abort_all();
    publisher.close().await;
    let latency = Latencies::of(rate, stats::rate(messages as u64, offered_for), latencies);
    let broker = broker_round_trip(&sender.config, rate, messages).await?;
    Ok(WebsocketFigures {
        connections,
        connect,
        idle_mib: sender.idle_mib,
        connected_mib,
        peak_mib,
        latency,
        broker,
    })
}

/// The broker alone at the same pace: publish (with its confirm) to a queue, consume it.
async fn broker_round_trip(
    config: &AmqpConfig,
    rate: f64,
    messages: usize,
) -> anyhow::Result<Latencies> {
    use futures::StreamExt;
    use lapin::options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;

    let connection =
        lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = channel
        .queue_declare(
            format!("{}.bench.round-trip", config.prefix)
                .as_str()
                .into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().as_str().into(),
            "round-trip".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let body = serde_json::to_vec(&job(
        Address::Websocket(WsKey::parse("bench/0").expect("valid")),
        0,
    ))?;
    let started: Arc<Vec<std::sync::OnceLock<Instant>>> =
        Arc::new((0..messages).map(|_| std::sync::OnceLock::new()).collect());
    let pacer = {
        let (channel, started, queue) =
            (channel.clone(), started.clone(), queue.name().to_string());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let begun = Instant::now();
            let mut confirms = tokio::task::JoinSet::new();
            for i in 0..messages {
                ticks.tick().await;
                let _ = started[i].set(Instant::now());
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        lapin::BasicProperties::default().with_message_id(i.to_string().into()),
                    )
                    .await?;
                confirms.spawn(async move { confirm.await.map(|_| ()) });
            }
            let offered = begun.elapsed();
            while let Some(done) = confirms.join_next().await {
                done??;
            }
            anyhow::Ok(offered)
        })
    };
    let mut latencies = Vec::with_capacity(messages);
    while latencies.len() < messages {
        let Some(delivery) = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await?
        else {
            bail!("the round trip consumer ended");
        };
        let delivery = delivery?;
        let at = Instant::now();
        let i: usize = delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| id.as_str().parse().ok())
            .context("a numbered message")?;
        if let Some(start) = started.get(i).and_then(std::sync::OnceLock::get) {
            latencies.push(at.duration_since(*start));
        }
    }
    let offered = pacer.await??;
    let _ = connection.close(200, "done".into()).await;
    Ok(Latencies::of(
        rate,
        stats::rate(messages as u64, offered),
        latencies,
    ))
}

/// XMPP against the tests' local Prosody: one JID, one room, and a pool of rooms.
struct XmppFigures {
    to_jid: Run,
    into_room: Run,
    room_messages: usize,
    pool_rooms: usize,
    pool_fill: Duration,
}

impl XmppFigures {
    fn print(&self) {
        println!(
            "xmpp     herald:  {:>8.0} messages/s to one JID (local Prosody, limits raised)",
            self.to_jid.rate
        );
        println!(
            "xmpp     herald:  {:>8.0} messages/s into one room (local Prosody, limits raised; {} messages)",
            self.into_room.rate, self.room_messages
        );
        println!(
            "xmpp     pool of {} rooms created and configured in {:.2} s ({:.0} ms a room)",
            self.pool_rooms,
            self.pool_fill.as_secs_f64(),
            self.pool_fill.as_secs_f64() * 1000.0 / self.pool_rooms as f64
        );
    }
}

async fn xmpp_runs(bin_dir: &std::path::Path, n: usize) -> anyhow::Result<XmppFigures> {
    const POOL: usize = 50;
    let prosody = Prosody::local();
    // Accounts of their own: a bot of `just up` or of the tests is never disturbed.
    let bot = prosody.register_unique("bench-bot").await;
    let person = prosody.register_unique("bench-person").await;
    let mut env = vec![
        ("HERALD_XMPP__JID", bot.jid.clone()),
        ("HERALD_XMPP__PASSWORD", bot.password.clone()),
        (
            "HERALD_XMPP__SERVER",
            format!("{}:{}", prosody.host, prosody.port),
        ),
        ("HERALD_XMPP__TLS", "none".to_owned()),
    ];
    // To one JID, whose person is online and reads everything: to an offline account
    // Prosody stores each message, rewriting the account's whole store every time, and the
    // bench would measure that (2,000 messages did not finish in 15 minutes).
    let online = stay_online(&prosody, &person).await?;
    let jid = messaging_core::values::Jid::parse(&person.jid)?;
    let to_jid = run_sender(
        bin_dir,
        Channel::Xmpp,
        &vec![Address::Xmpp(jid); n],
        Load::Raised,
        &env,
    )
    .await
    .context("xmpp run to one JID")?;

    // The pool: the bench plays the router, answering the bot's start with an empty roster,
    // and times the rooms' creation.
    let prefix = format!("bench-{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    env.extend([
        ("HERALD_XMPP__MUC_SERVICE", prosody.muc_domain.clone()),
        ("HERALD_XMPP__POOL_TARGET", POOL.to_string()),
        ("HERALD_XMPP__POOL_MAX", POOL.to_string()),
        ("HERALD_XMPP__ROOM_PREFIX", prefix),
    ]);
    let sender = Started::start(bin_dir, Channel::Xmpp, Load::Raised, &env, &[routing::ROOM])
        .await
        .context("xmpp pool run")?;
    let room_events = sender.watched[0].clone();
    let wait = Duration::from_secs(30);
    let next_event = async || -> anyhow::Result<RoomEvent> {
        let message = sender
            .inspector
            .wait_get(&room_events, wait)
            .await
            .context("no room event in time")?;
        Ok(serde_json::from_slice(&message.delivery.data)?)
    };
    let started = next_event().await?;
    anyhow::ensure!(
        started.change == RoomChange::BotStarted,
        "the bot's first room event: {:?}",
        started.change
    );
    let roster = RoomRoster {
        version: EnvelopeVersion,
        bot: started.bot.clone(),
        in_reply_to: started.event_id,
        rooms: vec![],
        created_at: chrono::Utc::now(),
    };
    let publisher = Publisher::new(Broker::new(sender.config.clone(), "bench"), "bench");
    publisher
        .publish(&Message::new(
            sender.names.events_exchange(),
            routing::ROSTER,
            &serde_json::to_vec(&roster)?,
        ))
        .await?;
    let asked = Instant::now();
    let mut rooms = Vec::new();
    while rooms.len() < POOL {
        let event = next_event().await?;
        if let RoomChange::Created { .. } = event.change {
            rooms.push(event.room);
        }
    }
    let pool_fill = asked.elapsed();
    publisher.close().await;

    // Into one of those rooms, the bot alone in it: every message comes back as an echo.
    let room = Address::XmppRoom(rooms[0].clone());
    let into_room = sender
        .load(&vec![room; n], Load::Raised)
        .await
        .context("xmpp run into one room")?;
    online.abort();
    prosody.unregister(&bot).await;
    prosody.unregister(&person).await;
    Ok(XmppFigures {
        to_jid,
        into_room,
        room_messages: n,
        pool_rooms: POOL,
        pool_fill,
    })
}

/// Logs the account in, says it is available and reads (and drops) whatever arrives, until
/// the task is aborted.
async fn stay_online(
    prosody: &Prosody,
    account: &herald_testkit::prosody::Account,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use futures::StreamExt;
    use tokio_xmpp::{Client, Event};
    let jid = tokio_xmpp::jid::Jid::new(&format!("{}/bench", account.jid))?;
    let mut client = Client::new_plaintext(
        jid,
        account.password.clone(),
        tokio_xmpp::connect::DnsConfig::addr(&format!("{}:{}", prosody.host, prosody.port)),
        tokio_xmpp::xmlstream::Timeouts::tight(),
    );
    loop {
        match tokio::time::timeout(Duration::from_secs(20), client.next())
            .await
            .context("the recipient's login took too long")?
        {
            Some(Event::Online { .. }) => break,
            Some(Event::Disconnected(e)) => bail!("the recipient cannot log in: {e}"),
            Some(_) => {}
            None => bail!("the recipient's client ended"),
        }
    }
    client
        .send_stanza(tokio_xmpp::parsers::presence::Presence::available().into())
        .await?;
    Ok(tokio::spawn(async move {
        while client.next().await.is_some() {}
    }))
}

/// More jobs than the ceiling lets through in the window, so the sender is busy all
/// through it.
fn outlasting(per_second: f64, window: Duration) -> usize {
    (per_second * window.as_secs_f64() * 1.3).ceil() as usize
}

fn one_chat(channel: Channel, n: usize) -> Vec<Address> {
    vec![Address::parse(channel, "77").expect("valid"); n]
}

struct Run {
    rate: f64,
    idle_mib: f64,
    /// Resident anonymous memory (heap, stacks) when idle.
    idle_anon_mib: f64,
    /// Resident file-backed memory (the binary and shared libraries) when idle.
    idle_file_mib: f64,
    peak_mib: f64,
}

/// How a run loads the sender.
#[derive(Clone, Copy)]
enum Load {
    /// Limits raised; the run lasts until every job is delivered.
    Raised,
    /// The channel's default limits; the run lasts this long after the first delivery, and
    /// the jobs left then are dropped with the run's queues.
    Default { window: Duration },
}

/// Starts the sender binary under a fresh prefix, waits until it consumes, measures idle
/// memory, publishes a job per address and measures until the load's end, sampling memory.
async fn run_sender(
    bin_dir: &std::path::Path,
    channel: Channel,
    to: &[Address],
    load: Load,
    env: &[(&str, String)],
) -> anyhow::Result<Run> {
    let sender = Started::start(bin_dir, channel, load, env, &[]).await?;
    sender.load(to, load).await
}

/// A sender binary running under a fresh prefix, consuming its send queue.
struct Started {
    channel: Channel,
    child: ChildGuard,
    config: AmqpConfig,
    topology: Topology,
    names: messaging_core::topology::Names,
    inspector: Inspector,
    /// Bound to the channel's delivery events.
    events: String,
    /// Bound, before the sender started, to the routing keys `start` was asked to watch.
    watched: Vec<String>,
    idle_mib: f64,
    idle_anon_mib: f64,
    idle_file_mib: f64,
}

impl Started {
    async fn start(
        bin_dir: &std::path::Path,
        channel: Channel,
        load: Load,
        env: &[(&str, String)],
        watch: &[&str],
    ) -> anyhow::Result<Started> {
        let prefix = unique_prefix(&format!("bench-{channel}"));
        let config = AmqpConfig {
            url: Secret::new(amqp_url()),
            prefix: prefix.clone(),
            ..AmqpConfig::default()
        };
        let topology = Topology::from_config(&config);
        let inspector = Inspector::connect().await;
        topology.declare(inspector.connection()).await?;
        let names = topology.names().clone();
        let events = inspector
            .temporary_queue(&names.events_exchange(), &format!("delivery.{channel}.#"))
            .await;
        let mut watched = Vec::new();
        for key in watch {
            watched.push(
                inspector
                    .temporary_queue(&names.events_exchange(), key)
                    .await,
            );
        }

        let binary: PathBuf = bin_dir.join(format!("sender-{channel}"));
        let mut command = Command::new(&binary);
        command
            .env("HERALD_AMQP__PREFIX", &prefix)
            .env("HERALD_HTTP__ADDR", "127.0.0.1:0")
            // BENCH_SENDER_LOG=info shows what a slow run's sender did.
            .env(
                "HERALD_LOG__FILTER",
                std::env::var("BENCH_SENDER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(if std::env::var_os("BENCH_SENDER_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit());
        if let Load::Raised = load {
            command
                .env("HERALD_SENDER__ACCOUNT_PER_SECOND", "1000000")
                .env("HERALD_SENDER__ACCOUNT_BURST", "1000000")
                .env("HERALD_SENDER__RECIPIENT_BURST", "1000000")
                .env("HERALD_SENDER__RECIPIENT_WINDOWS", "none");
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = ChildGuard(command.spawn().with_context(|| {
            format!("start {} (build it with --release first)", binary.display())
        })?);
        let queue = names.send_queue(channel);
        anyhow::ensure!(
            inspector
                .wait_for_consumer(&queue, Duration::from_secs(10))
                .await,
            "no consumer on {queue}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = child.0.id();
        Ok(Started {
            channel,
            child,
            config,
            topology,
            names,
            inspector,
            events,
            watched,
            idle_mib: rss_mib(pid)?,
            // The split tells what a smaller idle figure would need: less heap, or a
            // smaller binary.
            idle_anon_mib: status_kib(pid, "RssAnon:")? / 1024.0,
            idle_file_mib: status_kib(pid, "RssFile:")? / 1024.0,
        })
    }

    /// Publishes a job per address and waits for their deliveries (or the window's end).
    async fn load(mut self, to: &[Address], load: Load) -> anyhow::Result<Run> {
        let channel = self.channel;
        let n = to.len();
        let bodies: Vec<Vec<u8>> = to
            .iter()
            .enumerate()
            .map(|(i, to)| serde_json::to_vec(&job(to.clone(), i)).expect("serializable"))
            .collect();
        let publisher = Publisher::new(Broker::new(self.config.clone(), "bench"), "bench");
        let mut consumer = self
            .inspector
            .channel()
            .basic_consume(
                self.events.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let started = Instant::now();
        let producer = {
            let (publisher, exchange, key) = (
                publisher.clone(),
                self.names.send_exchange(),
                channel.as_str().to_owned(),
            );
            tokio::spawn(async move {
                for chunk in bodies.chunks(200) {
                    let batch: Vec<Message> = chunk
                        .iter()
                        .map(|b| Message::new(&exchange, &key, b))
                        .collect();
                    publisher.publish_batch(&batch).await?;
                }
                anyhow::Ok(())
            })
        };
        let pid = self.child.0.id();
        let mut delivered = 0;
        let mut peak_mib = self.idle_mib;
        let mut sampled = Instant::now();
        let mut first_delivery: Option<Instant> = None;
        use futures::StreamExt;
        while delivered < n {
            if let (Load::Default { window }, Some(first)) = (load, first_delivery)
                && first.elapsed() >= window
            {
                break;
            }
            let next = tokio::time::timeout(Duration::from_secs(60), consumer.next())
                .await
                .context("events stopped")?;
            let Some(Ok(message)) = next else {
                bail!("event stream ended")
            };
            message.acker.ack(BasicAckOptions::default()).await?;
            for event in messaging_core::events::DeliveryEventBundle::events_of(&message.data)? {
                if matches!(
                    event.result,
                    messaging_core::events::AttemptResult::Delivered { .. }
                ) {
                    delivered += 1;
                    first_delivery.get_or_insert_with(Instant::now);
                } else if event.result.is_final() {
                    bail!("a delivery failed: {event:?}");
                }
            }
            if sampled.elapsed() > Duration::from_millis(20) {
                peak_mib = peak_mib.max(rss_mib(pid)?);
                sampled = Instant::now();
            }
        }
        let elapsed = started.elapsed();
        producer.await??;
        peak_mib = peak_mib.max(peak_rss_mib(pid)?);
        self.child.stop();
        publisher.close().await;
        self.topology.delete(self.inspector.channel()).await?;
        self.inspector.close().await;
        Ok(Run {
            rate: stats::rate(n as u64, elapsed),
            idle_mib: self.idle_mib,
            idle_anon_mib: self.idle_anon_mib,
            idle_file_mib: self.idle_file_mib,
            peak_mib,
        })
    }
}

/// `n` addresses on a channel that has no rate limits in the fakes (email, SMS).
fn addresses(channel: Channel, n: usize) -> Vec<Address> {
    (0..n)
        .map(|i| match channel {
            Channel::Email => {
                Address::Email(Email::parse(&format!("user{i}@example.org")).expect("valid"))
            }
            _ => Address::Sms(E164::parse(&format!("+4179{i:07}")).expect("valid")),
        })
        .collect()
}

fn job(to: Address, i: usize) -> SendJob {
    SendJob {
        version: EnvelopeVersion,
        delivery_id: uuid::Uuid::now_v7(),
        message_id: uuid::Uuid::now_v7(),
        tenant: TenantKey::parse("acme").expect("valid"),
        to,
        user_id: None,
        content: RenderedContent {
            subject: Some(format!("Order {i}")),
            text: "Your order has shipped.".into(),
            html: None,
        },
        created_at: chrono::Utc::now(),
        expires_at: None,
    }
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} in /proc/{pid}/status"))?;
    let kib: f64 = line.split_whitespace().nth(1).context("value")?.parse()?;
    Ok(kib)
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    Ok(status_kib(pid, "VmRSS:")? / 1024.0)
}

/// The kernel's own high-water mark of resident memory.
fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    Ok(status_kib(pid, "VmHWM:")? / 1024.0)
}

struct ChildGuard(Child);

impl ChildGuard {
    /// SIGTERM, so the sender drains as it would in production.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// postfix's smtp-sink: a fast C SMTP server that accepts and discards.
struct SmtpSink {
    port: u16,
    child: Child,
}

impl SmtpSink {
    fn start() -> anyhow::Result<SmtpSink> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("smtp-sink")
            .args(["-u", "postfix", "-c", &format!("127.0.0.1:{port}"), "1000"])
            .stdout(Stdio::null())
            .spawn()
            .context("smtp-sink (Debian package postfix; scripts/bench-tools.sh installs it)")?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(SmtpSink { port, child });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("smtp-sink did not start")
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Herald's SMTP pool (`smtp.pool_max_size`'s default): the sessions of the ceiling run.
const SMTP_POOL: usize = 10;
/// Mails in the ceiling run, at least (it is over in about half a second).
const CEILING_MAILS: usize = 4_000;
/// Herald's share of the sink's ceiling to reach (issue #16).
const CEILING_TARGET: f64 = 0.5;

/// postfix's `smtp-source` putting `n` mails of 600 bytes into the sink over `sessions`
/// parallel sessions, a connection per mail or (`keep`, `-d`) one per session: mails/s.
fn smtp_source_rate(n: usize, sessions: usize, port: u16, keep: bool) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = Command::new("smtp-source")
        .args(keep.then_some("-d"))
        .args([
            "-s",
            &sessions.to_string(),
            "-m",
            &n.to_string(),
            "-l",
            "600",
            "-f",
            "noreply@herald.test",
            "-t",
            "bench@example.org",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .context("smtp-source (Debian package postfix; scripts/bench-tools.sh installs it)")?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!("smtp-source: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(stats::rate(n as u64, elapsed))
}

/// Apprise sending `n` mails to the sink through its Python API (one notify per mail), with
/// its built-in 5.5 s pause between mails switched off.
fn apprise_rate(n: usize, port: u16) -> anyhow::Result<f64> {
    let script = r#"
import sys, time, apprise
n, port = int(sys.argv[1]), int(sys.argv[2])
a = apprise.Apprise()
assert a.add(f"mailto://127.0.0.1:{port}/?from=noreply@herald.test&to=bench@example.org&mode=insecure&smtp=127.0.0.1")
# Apprise waits 5.5 s between mails by default (request_rate_per_sec); that is policy, and
# this compares capacity, so it is switched off.
a[0].request_rate_per_sec = 0
start = time.perf_counter()
for i in range(n):
    assert a.notify(title=f"Order {i}", body="Your order has shipped."), "apprise failed"
print(n / (time.perf_counter() - start))
"#;
    // scripts/bench-tools.sh installs Apprise into target/bench-venv.
    let venv = std::env::current_exe()?
        .parent()
        .map(|bin| bin.join("../bench-venv/bin/python3"))
        .filter(|python| python.is_file());
    let output = Command::new(venv.as_deref().unwrap_or("python3".as_ref()))
        .args(["-c", script, &n.to_string(), &port.to_string()])
        .output()?;
    if !output.status.success() {
        bail!("apprise: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}
