//! JWT checks (R19, #17): every configured claim required, `nbf` and the leeway honoured,
//! `global_admin` only through the configured claim, and an identity provider's keys from a
//! real JWKS endpoint, fetched on an unknown key id and not more often than configured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use herald_runtime::config::Secret;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use subscription_api::auth::JwtKeys;
use subscription_api::config::AuthConfig;

const SECRET: &str = "test-secret-for-jwt-checks";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn keys(config: AuthConfig) -> JwtKeys {
    JwtKeys::from_config(&AuthConfig {
        jwt_hs256_secret: Secret::new(SECRET.into()),
        ..config
    })
    .unwrap()
}

/// A tenant admin's claims with `iss` and `aud`, valid for ten minutes.
fn full() -> serde_json::Map<String, Value> {
    json!({"sub": "alice", "role": "tenant_admin", "tenant": "acme",
           "iss": "https://idp.example.org", "aud": "herald", "exp": now() + 600})
    .as_object()
    .unwrap()
    .clone()
}

fn without(claim: &str) -> Value {
    let mut claims = full();
    claims.remove(claim);
    Value::Object(claims)
}

fn with(claim: &str, value: Value) -> Value {
    let mut claims = full();
    claims.insert(claim.into(), value);
    Value::Object(claims)
}

#[tokio::test]
async fn every_configured_claim_is_required() {
    let keys = keys(AuthConfig {
        jwt_issuer: Some("https://idp.example.org".into()),
        jwt_audience: Some("herald".into()),
        ..AuthConfig::default()
    });
    assert!(keys.accepts(&hs256(&Value::Object(full()))).await);
    for claim in ["iss", "aud", "exp", "sub", "role"] {
        assert!(
            !keys.accepts(&hs256(&without(claim))).await,
            "a token without {claim} was accepted"
        );
    }
    assert!(
        !keys
            .accepts(&hs256(&with("iss", json!("https://evil.example"))))
            .await
    );
    assert!(
        !keys
            .accepts(&hs256(&with("aud", json!("someone-else"))))
            .await
    );
}

#[tokio::test]
async fn not_before_and_the_leeway_are_honoured() {
    let keys = keys(AuthConfig {
        jwt_leeway_secs: 30,
        ..AuthConfig::default()
    });
    assert!(!keys.accepts(&hs256(&with("nbf", json!(now() + 300)))).await);
    assert!(keys.accepts(&hs256(&with("nbf", json!(now() + 10)))).await);
    assert!(keys.accepts(&hs256(&with("nbf", json!(now() - 60)))).await);
    // Expired a little (within the leeway), and long ago.
    assert!(keys.accepts(&hs256(&with("exp", json!(now() - 10)))).await);
    assert!(!keys.accepts(&hs256(&with("exp", json!(now() - 100)))).await);
    let strict = self::keys(AuthConfig {
        jwt_leeway_secs: 0,
        ..AuthConfig::default()
    });
    assert!(
        !strict
            .accepts(&hs256(&with("exp", json!(now() - 10))))
            .await
    );
}

#[tokio::test]
async fn global_admin_comes_from_a_token_only_through_the_configured_claim() {
    let admin = |extra: Option<(&str, Value)>| {
        let mut claims = json!({"sub": "root", "role": "global_admin", "exp": now() + 600});
        if let Some((claim, value)) = extra {
            claims[claim] = value;
        }
        hs256(&claims)
    };
    let closed = keys(AuthConfig::default());
    assert!(!closed.accepts(&admin(None)).await);
    assert!(
        !closed
            .accepts(&admin(Some(("herald_admin", json!(true)))))
            .await
    );
    let open = keys(AuthConfig {
        jwt_global_admin_claim: Some("herald_admin".into()),
        ..AuthConfig::default()
    });
    assert!(
        open.accepts(&admin(Some(("herald_admin", json!(true)))))
            .await
    );
    assert!(!open.accepts(&admin(None)).await);
    assert!(
        !open
            .accepts(&admin(Some(("herald_admin", json!("true")))))
            .await
    );
    assert!(
        !open
            .accepts(&admin(Some(("herald_admin", json!(false)))))
            .await
    );
}

/// An Ed25519 signing key from a fixed seed, as PKCS#8 DER (what jsonwebtoken takes).
fn ed25519(seed: u8) -> EncodingKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend([seed; 32]);
    EncodingKey::from_ed_der(&der)
}

fn jwk(key: &EncodingKey, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, Algorithm::EdDSA).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

fn signed(key: &EncodingKey, kid: &str) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &full(), key).unwrap()
}

/// A JWKS endpoint on loopback that serves `set` (changeable) and counts its requests.
struct Provider {
    url: String,
    set: Arc<std::sync::Mutex<Option<JwkSet>>>,
    fetches: Arc<AtomicUsize>,
}

async fn provider(keys: Vec<Jwk>) -> Provider {
    let set = Arc::new(std::sync::Mutex::new(Some(JwkSet { keys })));
    let fetches = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/certs",
        get({
            let (set, fetches) = (set.clone(), fetches.clone());
            move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                match set.lock().unwrap().clone() {
                    Some(set) => (StatusCode::OK, axum::Json(json!(set))),
                    None => (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({}))),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/certs", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Provider { url, set, fetches }
}

fn provider_keys(url: &str, refresh_secs: u64) -> JwtKeys {
    herald_runtime::install_crypto_provider();
    JwtKeys::from_config(&AuthConfig {
        jwt_jwks_url: url.into(),
        jwt_jwks_refresh_secs: refresh_secs,
        jwt_issuer: Some("https://idp.example.org".into()),
        jwt_audience: Some("herald".into()),
        ..AuthConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn a_providers_keys_are_fetched_once_and_again_after_a_rotation() {
    let first = ed25519(1);
    let idp = provider(vec![jwk(&first, "k1")]).await;
    let keys = provider_keys(&idp.url, 0);
    assert!(keys.accepts(&signed(&first, "k1")).await);
    assert!(keys.accepts(&signed(&first, "k1")).await);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1, "the key is cached");

    // The provider rotates: a token with the new key id fetches the set again.
    let second = ed25519(2);
    *idp.set.lock().unwrap() = Some(JwkSet {
        keys: vec![jwk(&second, "k2")],
    });
    assert!(keys.accepts(&signed(&second, "k2")).await);
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 2);
    // A token signed with another key under a known id fails its signature check.
    assert!(!keys.accepts(&signed(&first, "k2")).await);
    // HS256 naming a provider key id: the algorithm-confusion attack.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k2".into());
    let confused = jsonwebtoken::encode(
        &header,
        &full(),
        &EncodingKey::from_secret(b"the public key, as a secret"),
    )
    .unwrap();
    assert!(!keys.accepts(&confused).await);
}

#[tokio::test]
async fn unknown_key_ids_do_not_hammer_the_provider_and_an_outage_is_503() {
    let key = ed25519(3);
    let idp = provider(vec![jwk(&key, "k1")]).await;
    let keys = provider_keys(&idp.url, 30);
    assert!(keys.accepts(&signed(&key, "k1")).await);
    for i in 0..20 {
        assert!(!keys.accepts(&signed(&key, &format!("random-{i}"))).await);
    }
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "random key ids fetched the set again within the refresh interval"
    );

    // The provider is down and a key is not cached yet: the API cannot tell, so 503.
    let down = provider(vec![]).await;
    *down.set.lock().unwrap() = None;
    let keys = provider_keys(&down.url, 0);
    let error = keys.decode(&signed(&key, "k1")).await.err().unwrap();
    assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
}
