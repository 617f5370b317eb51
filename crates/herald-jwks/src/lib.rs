//! The signing keys of an identity provider, fetched when a token names a key id not seen yet.
//!
//! Two services check tokens signed by someone else: the subscription API (an OIDC provider's
//! JWKS) and the Teams sender (the Bot Framework's keys, found through its OpenID metadata).
//! Both get keys here. A fetch happens when a token names an unknown key id (the provider
//! rotated its keys), one at a time and at most once per `min_refresh`, so tokens with random
//! key ids cannot make Herald hammer the provider.
//!
//! [`ws_token`]: the tokens the API issues to the tenant's WebSocket clients and
//! `sender-websocket` checks.
//!
//! A key keeps its `endorsements` (the Bot Framework lists, per key, the channels it may sign
//! for), which jsonwebtoken's `Jwk` leaves out.

pub mod ws_token;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the keys are published.
#[derive(Debug, Clone)]
pub enum Source {
    /// A JWKS document.
    Jwks(reqwest::Url),
    /// An OpenID Connect discovery document; its `jwks_uri` is the JWKS.
    OpenIdMetadata(reqwest::Url),
}

impl Source {
    fn url(&self) -> &reqwest::Url {
        match self {
            Source::Jwks(url) | Source::OpenIdMetadata(url) => url,
        }
    }
}

/// One signing key.
#[derive(Clone)]
pub struct Key {
    pub decoding: DecodingKey,
    /// The algorithm the set names for the key, if it names one.
    pub algorithm: Option<Algorithm>,
    /// The channels the key may sign for (Bot Framework); empty when the set says nothing.
    pub endorsements: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not in the set, even after a fetch (or a fetch was too recent to try again).
    #[error("unknown key id {0:?}")]
    Unknown(String),
    /// The set could not be fetched.
    #[error("the signing keys cannot be fetched: {0}")]
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid key set URL {url:?}: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: String,
}

/// Checks a configured URL: absolute, http or https.
pub fn parse_url(url: &str) -> Result<reqwest::Url, UrlError> {
    let bad = |why: String| UrlError {
        url: url.to_owned(),
        why,
    };
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| bad(e.to_string()))?;
    if !matches!(parsed.scheme(), "https" | "http") {
        return Err(bad("not an http(s) URL".into()));
    }
    Ok(parsed)
}

/// The keys, by key id.
pub struct KeySet {
    source: Source,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, Key>>,
    /// When the set was last fetched; one fetch at a time.
    fetched: Mutex<Option<Instant>>,
    /// The shortest time between two fetches.
    min_refresh: Duration,
}

#[derive(Deserialize)]
struct Metadata {
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    pub fn new(source: Source, min_refresh: Duration) -> Result<KeySet, UrlError> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| UrlError {
                url: source.url().to_string(),
                why: e.to_string(),
            })?;
        Ok(KeySet {
            source,
            client,
            keys: RwLock::new(HashMap::new()),
            fetched: Mutex::new(None),
            min_refresh,
        })
    }

    /// The key with this id, fetching the set if the id is new to us.
    pub async fn key(&self, kid: &str) -> Result<Key, KeyError> {
        if let Some(found) = self.keys.read().await.get(kid) {
            return Ok(found.clone());
        }
        // An unknown key id: the provider may have rotated its keys. One fetch at a time,
        // and not again within `min_refresh` of the last.
        let mut fetched = self.fetched.lock().await;
        if let Some(found) = self.keys.read().await.get(kid) {
            return Ok(found.clone());
        }
        if fetched.is_none_or(|at| at.elapsed() >= self.min_refresh) {
            let keys = self.fetch().await.inspect_err(|error| {
                tracing::warn!(url = %self.source.url(), %error, "cannot fetch the signing keys");
            })?;
            *fetched = Some(Instant::now());
            tracing::info!(url = %self.source.url(), keys = keys.len(), "fetched the signing keys");
            *self.keys.write().await = keys;
        }
        self.keys
            .read()
            .await
            .get(kid)
            .cloned()
            .ok_or_else(|| KeyError::Unknown(kid.to_owned()))
    }

    async fn fetch(&self) -> Result<HashMap<String, Key>, KeyError> {
        let jwks_url = match &self.source {
            Source::Jwks(url) => url.clone(),
            Source::OpenIdMetadata(url) => {
                let metadata: Metadata = self.get_json(url.clone()).await?;
                parse_url(&metadata.jwks_uri)
                    .map_err(|e| KeyError::Unavailable(format!("the metadata's jwks_uri: {e}")))?
            }
        };
        let set: RawSet = self.get_json(jwks_url).await?;
        Ok(set.keys.iter().filter_map(usable).collect())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: reqwest::Url,
    ) -> Result<T, KeyError> {
        let unavailable = |why: String| KeyError::Unavailable(why);
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| unavailable(format!("{url}: {e}")))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("{url}: status {}", response.status())));
        }
        response
            .json()
            .await
            .map_err(|e| unavailable(format!("{url}: {e}")))
    }
}

/// A signing key of the set, by its id; keys for encryption, without an id or of a kind
/// jsonwebtoken cannot use are left out.
fn usable(raw: &serde_json::Value) -> Option<(String, Key)> {
    let jwk: Jwk = serde_json::from_value(raw.clone()).ok()?;
    let kid = jwk.common.key_id.clone()?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    let algorithm = jwk
        .common
        .key_algorithm
        .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
    let endorsements = raw
        .get("endorsements")
        .and_then(|e| e.as_array())
        .map(|list| {
            list.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some((
        kid,
        Key {
            decoding,
            algorithm,
            endorsements,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // A 2048-bit RSA modulus is not needed to test parsing: jsonwebtoken accepts any n/e.
    fn rsa_jwk(kid: &str) -> serde_json::Value {
        json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB", "endorsements": ["msteams", "emulator"]})
    }

    #[test]
    fn a_signing_key_keeps_its_endorsements_and_algorithm() {
        let (kid, key) = usable(&rsa_jwk("k1")).unwrap();
        assert_eq!(kid, "k1");
        assert_eq!(key.algorithm, Some(Algorithm::RS256));
        assert_eq!(key.endorsements, ["msteams", "emulator"]);
    }

    #[test]
    fn encryption_keys_and_keys_without_an_id_are_left_out() {
        let mut encryption = rsa_jwk("k2");
        encryption["use"] = json!("enc");
        assert!(usable(&encryption).is_none());
        let mut anonymous = rsa_jwk("k3");
        anonymous.as_object_mut().unwrap().remove("kid");
        assert!(usable(&anonymous).is_none());
        assert!(usable(&json!({"kty": "nonsense"})).is_none());
    }

    #[test]
    fn only_http_urls_are_taken() {
        assert!(
            parse_url("https://login.botframework.com/v1/.well-known/openidconfiguration").is_ok()
        );
        assert!(parse_url("ftp://example.org/keys").is_err());
        assert!(parse_url("not a url").is_err());
    }
}
