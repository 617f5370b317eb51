//! Proving addresses (issue #17): what the API sends to an address that someone added, and
//! the rules on which addresses may be added at all.
//!
//! A verification message is queued by the API itself, in the same transaction as the
//! address: a message row with one delivery (tracked, retried and reported like any other)
//! and its send job in the outbox, which the relay publishes to the channel's send queue. The
//! router is not involved: it sends nothing to an unproven address, and the code must not
//! pass through a request a producer could also write.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use herald_storage::addresses::AddressRow;
use herald_storage::tenants::Tenant;
use herald_storage::users::User;
use herald_storage::verification::{self, Caps, NewCode, QueuedMessage};
use herald_storage::{StoreError, secret};
use messaging_core::job::{RenderedContent, SendJob};
use messaging_core::topology::Names;
use messaging_core::values::{TenantKey, UserId};
use messaging_core::{Address, AddressKind, EnvelopeVersion};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::config::{LimitsConfig, VerificationConfig, parse_country_codes};
use crate::error::ApiError;

/// The AMQP `type` of a send job (the router's are the same).
const JOB_KIND: &str = "herald.send_job.v1";

/// How addresses are proven, built once from the settings.
pub struct Verifier {
    key: Vec<u8>,
    /// The key link codes (R5) are hashed with: the configured secret, which the router
    /// that redeems them has too, or none (an unkeyed hash) when it is not set.
    pub link_key: Vec<u8>,
    public_url: String,
    code_ttl: chrono::Duration,
    link_ttl: chrono::Duration,
    /// Wrong codes before a code is void.
    pub attempts: i32,
    caps: Caps,
    sms_default: Vec<String>,
    /// Addresses one person may have on one channel.
    pub addresses_per_channel: i64,
    /// Registrations one person may have.
    pub registrations_per_user: i64,
}

/// A code on its way, as the API reports it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CodeSent {
    /// The message that carries the code: `GET /messages/{id}` shows how its delivery went.
    pub message_id: Uuid,
    /// `link` for email (the person opens it), `code` for the others (they type it back to
    /// `POST /users/{userId}/addresses/{addressId}/verify`).
    pub method: &'static str,
    pub expires_at: DateTime<Utc>,
    /// Wrong codes allowed before the code is void.
    pub attempts: i32,
}

impl Verifier {
    pub fn from_config(v: &VerificationConfig, api: &LimitsConfig) -> Result<Self, String> {
        let key = match v.code_secret.expose().as_bytes() {
            [] => {
                tracing::warn!(
                    "verification.code_secret is not set: codes are hashed with a random key of this process; they fail after a restart and on another replica"
                );
                secret::new_link_token().into_bytes()
            }
            set if set.len() < 16 => {
                return Err("verification.code_secret must be at least 16 bytes".into());
            }
            set => set.to_vec(),
        };
        Ok(Verifier {
            link_key: v.code_secret.expose().as_bytes().to_vec(),
            key,
            public_url: v.public_url.trim_end_matches('/').to_owned(),
            code_ttl: chrono::Duration::seconds(i64::from(v.code_ttl_secs)),
            link_ttl: chrono::Duration::seconds(i64::from(v.link_ttl_secs)),
            attempts: v.attempts.max(1),
            caps: Caps {
                per_address_per_day: v.per_address_per_day,
                per_tenant_per_hour: v.per_tenant_per_hour,
            },
            sms_default: api.sms_country_codes()?,
            addresses_per_channel: api.addresses_per_channel,
            registrations_per_user: api.registrations_per_user,
        })
    }

    /// The stored form of a code or link token.
    pub fn hash(&self, code: &str) -> Vec<u8> {
        secret::keyed_hash(&self.key, code.trim())
    }

    /// The country calling codes SMS may go to in `tenant`: its own list, or the operator's
    /// default (`api.sms_country_codes`).
    pub fn sms_country_codes<'a>(&'a self, tenant: &'a Tenant) -> &'a [String] {
        tenant
            .sms_country_codes
            .as_deref()
            .unwrap_or(&self.sms_default)
    }

    /// SMS only to the tenant's country calling codes (or the default list): toll fraud
    /// pumps messages to expensive ranges abroad. E.164 country codes are a prefix code, so a
    /// prefix match is exact.
    pub fn check_sms_destination(&self, tenant: &Tenant, number: &str) -> Result<(), ApiError> {
        let allowed = self.sms_country_codes(tenant);
        let digits = number.trim_start_matches('+');
        if allowed.iter().any(|code| digits.starts_with(code.as_str())) {
            return Ok(());
        }
        let detail = if allowed.is_empty() {
            "SMS is not enabled for this tenant: the operator sets the country codes SMS may go to (api.sms_country_codes, or the tenant's smsCountryCodes)".to_owned()
        } else {
            format!(
                "SMS goes only to numbers with country code {} in this tenant",
                allowed
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(ApiError::invalid("address", detail))
    }

    /// Sends a new code to `address` (replacing any earlier one), within the caps, in `tx`.
    pub async fn send(
        &self,
        tx: &mut PgConnection,
        names: &Names,
        tenant: &Tenant,
        user: &User,
        address: &AddressRow,
        actor: &str,
    ) -> Result<CodeSent, ApiError> {
        if let Some(capped) =
            verification::check_caps(tx, tenant.id, address.channel, &address.value, self.caps)
                .await?
        {
            let detail = match capped.scope {
                "address" => format!(
                    "this address was sent {} verification messages in the last 24 hours, the most it gets",
                    capped.limit
                ),
                _ => format!(
                    "this tenant sent {} verification messages in the last hour, the most it may",
                    capped.limit
                ),
            };
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many verification messages",
                detail,
            )
            .with_retry_after(capped.retry_after_secs.unsigned_abs()));
        }
        let to = Address::from_kind(address.kind, &address.value)
            .map_err(|e| ApiError::invalid("address", e.to_string()))?;
        let link = address.kind == AddressKind::Email;
        let (code, ttl) = if link {
            (secret::new_link_token(), self.link_ttl)
        } else {
            (secret::new_numeric_code(), self.code_ttl)
        };
        let expires_at = verification::store_code(
            tx,
            NewCode {
                tenant_id: tenant.id,
                address_id: address.id,
                channel: address.channel,
                value: &address.value,
                code_hash: &self.hash(&code),
                link,
                ttl,
                actor,
            },
        )
        .await?;
        let content = if link {
            self.mail(tenant, &code, ttl)
        } else {
            code_text(tenant, &code, ttl)
        };
        let (message_id, delivery_id) = (Uuid::now_v7(), Uuid::now_v7());
        let job = SendJob {
            version: EnvelopeVersion,
            delivery_id,
            message_id,
            tenant: TenantKey::parse(&tenant.key)
                .map_err(|e| ApiError::bad_request(e.to_string()))?,
            to,
            user_id: UserId::parse(&user.external_id).ok(),
            content,
            created_at: Utc::now(),
            expires_at: Some(expires_at),
        };
        let job = serde_json::to_vec(&job).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let request = serde_json::json!({
            "verification": {"addressId": address.id, "channel": address.channel, "method": if link { "link" } else { "code" }}
        });
        verification::queue_message(
            tx,
            QueuedMessage {
                tenant_id: tenant.id,
                message_id,
                delivery_id,
                user_id: user.id,
                address_id: address.id,
                channel: address.channel,
                value: &address.value,
                request: &request,
                job: &job,
                job_kind: JOB_KIND,
                exchange: &names.send_exchange(),
            },
        )
        .await?;
        tracing::info!(%message_id, address_id = %address.id, channel = %address.channel, tenant = %tenant.key, %actor, "verification message queued");
        Ok(CodeSent {
            message_id,
            method: if link { "link" } else { "code" },
            expires_at,
            attempts: self.attempts,
        })
    }

    /// The link a mailed token is confirmed at.
    pub fn link(&self, token: &str) -> String {
        format!("{}{}/verify/{token}", self.public_url, crate::routes::BASE)
    }

    fn mail(&self, tenant: &Tenant, token: &str, ttl: chrono::Duration) -> RenderedContent {
        let link = self.link(token);
        let name = &tenant.name;
        let hours = ttl.num_hours().max(1);
        RenderedContent {
            subject: Some(format!("Confirm your address for {name}")),
            text: format!(
                "Someone, hopefully you, asked {name} to send notifications to this address.\n\
                 To confirm that it is yours, open this link within {hours} hours:\n\n{link}\n\n\
                 If it was not you, ignore this mail: nothing else will be sent here."
            ),
            html: None,
        }
    }
}

fn code_text(tenant: &Tenant, code: &str, ttl: chrono::Duration) -> RenderedContent {
    let minutes = ttl.num_minutes().max(1);
    RenderedContent {
        subject: None,
        text: format!(
            "{}: your confirmation code is {code}. It expires in {minutes} minutes. If you did not ask for it, ignore this message.",
            tenant.name
        ),
        html: None,
    }
}

/// A tenant's SMS country list as set through the API: each item one code, like `41`.
pub fn country_codes(raw: &[String]) -> Result<Vec<String>, ApiError> {
    let mut codes = Vec::with_capacity(raw.len());
    for item in raw {
        match parse_country_codes(item).as_deref() {
            Ok([code]) if item.trim() == item => codes.push(code.clone()),
            Ok(_) => {
                return Err(ApiError::invalid(
                    "smsCountryCodes",
                    format!("`{item}` is not one country calling code (1 to 3 digits, like 41)"),
                ));
            }
            Err(e) => return Err(ApiError::invalid("smsCountryCodes", e.clone())),
        }
    }
    codes.sort();
    codes.dedup();
    Ok(codes)
}
