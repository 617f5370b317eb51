//! A service built from the shared runtime serves liveness, readiness and metrics, reports
//! the broker in readiness, and stops when asked.

// A test fails on the line that broke: unwrap and expect are how it says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use herald_runtime::config::{AmqpConfig, BaseConfig, Secret};
use herald_runtime::service::Service;
use herald_testkit::broker::{Inspector, amqp_url, unique_prefix};
use herald_testkit::http;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

async fn wait_ready(addr: std::net::SocketAddr) -> String {
    for _ in 0..100 {
        let (status, body) = http::get(addr, "/readyz").await.unwrap();
        if status == 200 {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reports_health_declares_the_topology_and_stops_on_request() {
    let prefix = unique_prefix("service_health");
    let config = BaseConfig {
        amqp: AmqpConfig {
            url: Secret::new(amqp_url()),
            prefix: prefix.clone(),
            ..AmqpConfig::default()
        },
        ..BaseConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let service = Service::with_parts("test-service", config, listener, shutdown.clone());
    let addr = service.local_addr().unwrap();
    let topology = service.topology.clone();
    let stop = shutdown.clone();
    let running =
        tokio::spawn(service.run(axum::Router::new(), async move { stop.cancelled().await }));

    assert_eq!(http::get(addr, "/healthz").await.unwrap().0, 200);
    let body = wait_ready(addr).await;
    assert!(body.contains("amqp:broker"), "{body}");

    // Ready means the topology is there: every work queue exists.
    let inspector = Inspector::connect().await;
    for queue in topology.names().work_queues() {
        assert_eq!(inspector.queue_len(&queue).await, 0);
    }
    let (status, metrics) = http::get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.is_empty() || metrics.contains('#') || metrics.contains("herald_"),
        "{metrics}"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops promptly")
        .unwrap()
        .unwrap();
    assert!(
        http::get(addr, "/healthz").await.is_err(),
        "the listener is closed after stop"
    );

    topology.delete(inspector.channel()).await.unwrap();
    inspector.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_says_so_when_the_broker_is_unreachable() {
    let config = BaseConfig {
        amqp: AmqpConfig {
            // Nothing listens on port 1.
            url: Secret::new("amqp://guest:guest@127.0.0.1:1/%2f".into()),
            prefix: unique_prefix("unreachable"),
            ..AmqpConfig::default()
        },
        ..BaseConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let service = Service::with_parts("test-service", config, listener, shutdown.clone());
    let addr = service.local_addr().unwrap();
    let stop = shutdown.clone();
    let running =
        tokio::spawn(service.run(axum::Router::new(), async move { stop.cancelled().await }));

    let mut last = (0, String::new());
    for _ in 0..40 {
        last = http::get(addr, "/readyz").await.unwrap();
        if last.1.contains("cannot connect") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(last.1.contains("cannot connect"), "{}", last.1);
    assert!(
        !last.1.contains("guest:guest"),
        "credentials never appear: {}",
        last.1
    );
    assert_eq!(
        http::get(addr, "/healthz").await.unwrap().0,
        200,
        "alive even when not ready"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops promptly")
        .unwrap()
        .unwrap();
}

/// Issue #17: with an admin address, the public port says only ready or not, and has no
/// metrics; the admin address has both in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_address_the_public_port_says_ready_and_nothing_more() {
    let prefix = unique_prefix("service_admin");
    let config = BaseConfig {
        amqp: AmqpConfig {
            // Nothing listens here: the broker component stays not ready, with its error.
            url: Secret::new("amqp://guest:guest@127.0.0.1:1/%2f".into()),
            prefix,
            reconnect_max_ms: 200,
            ..AmqpConfig::default()
        },
        ..BaseConfig::default()
    };
    let shutdown = CancellationToken::new();
    let service = Service::with_parts(
        "test-service",
        config,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        shutdown.clone(),
    )
    .with_admin_listener(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let public = service.local_addr().unwrap();
    let admin = service.admin_addr().unwrap();
    let stop = shutdown.clone();
    let running =
        tokio::spawn(service.run(axum::Router::new(), async move { stop.cancelled().await }));

    // The admin side names the component and its error once the watch has tried.
    let mut detail = String::new();
    for _ in 0..100 {
        let (status, body) = http::get(admin, "/readyz").await.unwrap();
        assert_eq!(status, 503);
        if body.contains("cannot connect") {
            detail = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(detail.contains("amqp:broker"), "{detail}");
    assert_eq!(http::get(admin, "/metrics").await.unwrap().0, 200);

    let (status, body) = http::get(public, "/readyz").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(body.trim(), r#"{"ready":false}"#);
    assert_eq!(http::get(public, "/healthz").await.unwrap().0, 200);
    assert_eq!(http::get(public, "/metrics").await.unwrap().0, 404);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops promptly")
        .unwrap()
        .unwrap();
    assert!(
        http::get(admin, "/healthz").await.is_err(),
        "the admin listener is closed too"
    );
}
