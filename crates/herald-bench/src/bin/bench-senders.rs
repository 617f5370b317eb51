//! The senders' benchmark (`just bench-senders`).
//!
//! Runs the real `sender-email` and `sender-sms` release binaries as child processes against
//! the real broker, and measures:
//! - email throughput: N send jobs published -> N `delivered` events, through a local SMTP
//!   sink (postfix's `smtp-sink`), and in the same run the same N mails sent by Apprise
//!   (Python) to the same sink: both figures and their ratio;
//! - SMS throughput against the fake Twilio-compatible provider;
//! - each sender's resident memory when idle and its peak while loaded.
//!
//! Rate limits are raised out of the way: they are policy, and this measures capacity.

// A benchmark's fixed inputs are valid by construction; failing on them is a broken benchmark.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use herald_bench::stats;
use herald_runtime::amqp::{Broker, Message, Publisher, Topology};
use herald_runtime::config::{AmqpConfig, Secret};
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use herald_testkit::fake_sms::FakeSms;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use messaging_core::job::{RenderedContent, SendJob};
use messaging_core::values::{E164, Email, TenantKey};
use messaging_core::{Address, Channel, EnvelopeVersion};

#[derive(Parser)]
struct Args {
    /// Mails (and texts) per run.
    #[arg(long, default_value_t = 2_000)]
    messages: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_runtime::install_crypto_provider();
    let args = Args::parse();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();

    let sink = SmtpSink::start()?;
    println!(
        "bench-senders: {} messages per run; SMTP sink: postfix smtp-sink on port {}",
        args.messages, sink.port
    );

    // Email through Herald.
    let email = run_sender(
        &bin_dir,
        Channel::Email,
        args.messages,
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

    // SMS through Herald, against the fake provider.
    let fake = FakeSms::start("ACbench", "token").await;
    let sms = run_sender(
        &bin_dir,
        Channel::Sms,
        args.messages,
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

    println!();
    println!("email  herald:  {:>8.0} mails/s", email.rate);
    println!(
        "email  apprise: {:>8.0} mails/s (its default 5.5 s pause between mails switched off)",
        apprise
    );
    println!("ratio herald/apprise: {:.1}", email.rate / apprise);
    println!("sms    herald:  {:>8.0} texts/s (fake provider)", sms.rate);
    println!(
        "memory sender-email: idle {:.1} MiB, peak loaded {:.1} MiB",
        email.idle_mib, email.peak_mib
    );
    println!(
        "memory sender-sms:   idle {:.1} MiB, peak loaded {:.1} MiB",
        sms.idle_mib, sms.peak_mib
    );
    Ok(())
}

struct Run {
    rate: f64,
    idle_mib: f64,
    peak_mib: f64,
}

/// Starts the sender binary under a fresh prefix, waits until it consumes, measures idle
/// memory, publishes `n` jobs and measures until `n` delivered events, sampling memory.
async fn run_sender(
    bin_dir: &std::path::Path,
    channel: Channel,
    n: usize,
    env: &[(&str, String)],
) -> anyhow::Result<Run> {
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

    let binary: PathBuf = bin_dir.join(format!("sender-{channel}"));
    let mut command = Command::new(&binary);
    command
        .env("HERALD_AMQP__PREFIX", &prefix)
        .env("HERALD_HTTP__ADDR", "127.0.0.1:0")
        .env("HERALD_LOG__FILTER", "warn")
        .env("HERALD_SENDER__ACCOUNT_PER_SECOND", "1000000")
        .env("HERALD_SENDER__ACCOUNT_BURST", "1000000")
        .env("HERALD_SENDER__RECIPIENT_BURST", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child =
        ChildGuard(command.spawn().with_context(|| {
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
    let idle_mib = rss_mib(child.0.id())?;

    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| serde_json::to_vec(&job(channel, i)).expect("serializable"))
        .collect();
    let publisher = Publisher::new(Broker::new(config.clone(), "bench"), "bench");
    let mut consumer = inspector
        .channel()
        .basic_consume(
            events.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let producer = {
        let (publisher, exchange, key) = (
            publisher.clone(),
            names.send_exchange(),
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
    let mut delivered = 0;
    let mut peak_mib = idle_mib;
    let mut sampled = Instant::now();
    use futures::StreamExt;
    while delivered < n {
        let next = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .context("events stopped")?;
        let Some(Ok(message)) = next else {
            bail!("event stream ended")
        };
        message.acker.ack(BasicAckOptions::default()).await?;
        let event: messaging_core::events::DeliveryEvent = serde_json::from_slice(&message.data)?;
        if matches!(
            event.result,
            messaging_core::events::AttemptResult::Delivered { .. }
        ) {
            delivered += 1;
        } else if event.result.is_final() {
            bail!("a delivery failed: {event:?}");
        }
        if sampled.elapsed() > Duration::from_millis(20) {
            peak_mib = peak_mib.max(rss_mib(child.0.id())?);
            sampled = Instant::now();
        }
    }
    let elapsed = started.elapsed();
    producer.await??;
    peak_mib = peak_mib.max(peak_rss_mib(child.0.id())?);
    child.stop();
    publisher.close().await;
    topology.delete(inspector.channel()).await?;
    inspector.close().await;
    Ok(Run {
        rate: stats::rate(n as u64, elapsed),
        idle_mib,
        peak_mib,
    })
}

fn job(channel: Channel, i: usize) -> SendJob {
    let to = match channel {
        Channel::Email => {
            Address::Email(Email::parse(&format!("user{i}@example.org")).expect("valid"))
        }
        _ => Address::Sms(E164::parse(&format!("+4179{i:07}")).expect("valid")),
    };
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
    let output = Command::new("python3")
        .args(["-c", script, &n.to_string(), &port.to_string()])
        .output()?;
    if !output.status.success() {
        bail!("apprise: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}
