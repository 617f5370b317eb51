//! A client that plays Discord posting interactions to a bot's interactions endpoint: signed
//! with an ed25519 key as Discord signs them, so the endpoint under test verifies real
//! signatures.
//!
//! Discord signs `timestamp + raw body` and sends the signature (hex) in
//! `X-Signature-Ed25519` and the timestamp in `X-Signature-Timestamp`; the endpoint checks
//! them against the application's public key before it parses the body, and answers 401 when
//! they do not verify (Discord's own PING check sends bad signatures on purpose).
//!
//! ```no_run
//! # async fn example(url: &str) -> std::io::Result<()> {
//! use herald_testkit::discord_interactions::{InteractionClient, Place};
//! let discord = InteractionClient::new(1_234);
//! // Give `discord.public_key_hex()` to the endpoint, then:
//! let reply = discord.post(url, &discord.ping()).await?;
//! assert_eq!(reply.body["type"], 1);
//! let link = discord.link("K7Q2-9XPM", 42, Place::Dm { channel_id: 77 });
//! let reply = discord.post(url, &link).await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde_json::{Value, json};

pub const SIGNATURE_HEADER: &str = "X-Signature-Ed25519";
pub const TIMESTAMP_HEADER: &str = "X-Signature-Timestamp";

/// Where the user invoked the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// In the user's DM with the bot: the interaction carries `user`.
    Dm { channel_id: u64 },
    /// In a guild channel: the interaction carries `member.user` and `guild_id`.
    Guild { guild_id: u64, channel_id: u64 },
}

/// How a request is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// With this client's key, over the timestamp and the body sent.
    Valid,
    /// With another key: well-formed, but does not verify.
    WrongKey,
    /// With this client's key, but over a different body than the one sent.
    TamperedBody,
    /// No signature headers at all.
    Missing,
}

/// What the endpoint answered.
#[derive(Debug, Clone)]
pub struct InteractionReply {
    pub status: u16,
    /// The body as JSON, or `Null` when it is not JSON.
    pub body: Value,
    pub text: String,
}

pub struct InteractionClient {
    signing_key: SigningKey,
    application_id: u64,
    /// Interaction and command ids: unique and increasing, like snowflakes.
    next_id: AtomicU64,
}

impl InteractionClient {
    /// A client with a fresh random key for this application.
    pub fn new(application_id: u64) -> InteractionClient {
        Self::from_secret(rand::random(), application_id)
    }

    /// A client with a fixed key, for reproducible signatures.
    pub fn from_secret(secret: [u8; 32], application_id: u64) -> InteractionClient {
        InteractionClient {
            signing_key: SigningKey::from_bytes(&secret),
            application_id,
            next_id: AtomicU64::new(1_310_000_000_000_000_000),
        }
    }

    /// The application's public key as the Developer Portal shows it (64 hex digits).
    pub fn public_key_hex(&self) -> String {
        hex::encode(self.verifying_key().as_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }

    pub fn application_id(&self) -> u64 {
        self.application_id
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The signature (hex) Discord sends for this timestamp and body.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        let mut message = timestamp.as_bytes().to_vec();
        message.extend_from_slice(body);
        hex::encode(self.signing_key.sign(&message).to_bytes())
    }

    /// A PING (type 1), which Discord sends when the endpoint URL is saved; the endpoint must
    /// answer `{"type": 1}`.
    pub fn ping(&self) -> Value {
        json!({
            "id": self.next_id().to_string(),
            "application_id": self.application_id.to_string(),
            "type": 1,
            "token": self.interaction_token(),
            "version": 1,
        })
    }

    /// `/link code:<code>`.
    pub fn link(&self, code: &str, user_id: u64, place: Place) -> Value {
        self.command("link", &[("code", code)], user_id, place)
    }

    /// `/support text:<text>`.
    pub fn support(&self, text: &str, user_id: u64, place: Place) -> Value {
        self.command("support", &[("text", text)], user_id, place)
    }

    /// A slash command (APPLICATION_COMMAND, type 2) with string options, as Discord sends
    /// it, with every field serenity 0.12's `CommandInteraction` requires.
    pub fn command(
        &self,
        name: &str,
        options: &[(&str, &str)],
        user_id: u64,
        place: Place,
    ) -> Value {
        let options: Vec<Value> = options
            .iter()
            .map(|(name, value)| json!({"name": name, "type": 3, "value": value}))
            .collect();
        let mut interaction = json!({
            "id": self.next_id().to_string(),
            "application_id": self.application_id.to_string(),
            "type": 2,
            "token": self.interaction_token(),
            "version": 1,
            "data": {
                "id": self.next_id().to_string(),
                "name": name,
                "type": 1,
                "options": options,
            },
            "locale": "en-US",
            "app_permissions": "2248473465835073",
            "entitlements": [],
            "attachment_size_limit": 10_485_760,
        });
        let user = crate::fake_discord::user_json(user_id);
        match place {
            Place::Dm { channel_id } => {
                interaction["channel_id"] = json!(channel_id.to_string());
                interaction["channel"] =
                    json!({"id": channel_id.to_string(), "type": 1, "flags": 0});
                interaction["user"] = user;
                // Installed to a guild, invoked in the bot's DM: Discord sends guild id "0".
                interaction["authorizing_integration_owners"] = json!({"0": "0"});
                interaction["context"] = json!(1);
            }
            Place::Guild {
                guild_id,
                channel_id,
            } => {
                interaction["channel_id"] = json!(channel_id.to_string());
                interaction["channel"] = json!({"id": channel_id.to_string(), "type": 0, "name": "general", "guild_id": guild_id.to_string()});
                interaction["guild_id"] = json!(guild_id.to_string());
                interaction["guild_locale"] = json!("en-US");
                interaction["member"] = json!({
                    "user": user,
                    "nick": null,
                    "avatar": null,
                    "roles": [],
                    "joined_at": "2025-01-01T00:00:00.000000+00:00",
                    "premium_since": null,
                    "deaf": false,
                    "mute": false,
                    "flags": 0,
                    "pending": false,
                    "permissions": "2248473465835073",
                    "communication_disabled_until": null,
                });
                interaction["authorizing_integration_owners"] = json!({"0": guild_id.to_string()});
                interaction["context"] = json!(0);
            }
        }
        interaction
    }

    fn interaction_token(&self) -> String {
        format!(
            "aW50ZXJhY3Rpb246{}",
            hex::encode(rand::random::<[u8; 24]>())
        )
    }

    /// POSTs `interaction`, signed, to `url` (plain `http://`).
    pub async fn post(&self, url: &str, interaction: &Value) -> std::io::Result<InteractionReply> {
        self.post_signed(url, interaction, Signing::Valid).await
    }

    /// POSTs `interaction` to `url`, signed as `signing` says.
    pub async fn post_signed(
        &self,
        url: &str,
        interaction: &Value,
        signing: Signing,
    ) -> std::io::Result<InteractionReply> {
        let body = serde_json::to_vec(interaction).map_err(std::io::Error::other)?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let signature = match signing {
            Signing::Valid => Some(self.sign(&timestamp, &body)),
            Signing::WrongKey => {
                Some(InteractionClient::new(self.application_id).sign(&timestamp, &body))
            }
            Signing::TamperedBody => {
                let mut other = body.clone();
                other.extend_from_slice(b" ");
                Some(self.sign(&timestamp, &other))
            }
            Signing::Missing => None,
        };
        let mut headers = vec![(
            "User-Agent",
            "Discord-Interactions/1.0 (+https://discord.com)",
        )];
        if let Some(signature) = &signature {
            headers.push((SIGNATURE_HEADER, signature.as_str()));
            headers.push((TIMESTAMP_HEADER, timestamp.as_str()));
        }
        let (status, text) = crate::http::post_json(url, &headers, &body).await?;
        Ok(InteractionReply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        })
    }
}
