//! The email channel: async SMTP (lettre) over a connection pool of its own
//! ([`connections`]: bounded, reused, `TCP_NODELAY`).
//!
//! Plain, STARTTLS or implicit TLS by config, always with certificate checks (public roots,
//! plus a private CA from `HERALD_SMTP__TLS_CA_FILE`); a text body with an HTML alternative
//! when the job has one; From and Reply-To per tenant. SMTP answers map to exactly one kind:
//!
//! | answer | kind |
//! |---|---|
//! | 250 | delivered (to the server) |
//! | 4xx | retry |
//! | 530, 534, 535, 538 (authentication) | unhealthy |
//! | other 5xx (unknown mailbox, rejected message) | permanent |
//! | connection refused, TLS failure, unexpected answer | unhealthy |
//! | timeout | retry, counted by the circuit breaker |

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_runtime::config::Secret;
use lettre::Message;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use messaging_core::job::SendJob;
use messaging_core::{Address, Channel};
use sender_runtime::limits::RateLimits;
use sender_runtime::{BuildError, Built, ChannelSender, Receipt, SendError};
use serde::Deserialize;

mod connections;
use connections::{Connections, Security, Server, SmtpError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain SMTP: only for a relay on the same host or a test sink.
    None,
    /// Upgrade with STARTTLS, and refuse a server that does not offer it.
    Starttls,
    /// Implicit TLS from the first byte (port 465).
    Tls,
}

/// `smtp.*`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpSettings {
    /// Empty: not configured.
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// A PEM file of extra root certificates, for a relay whose certificate comes from a
    /// private CA. Trusted besides the public roots; certificates are always checked.
    /// Empty: none (compose passes an unset variable as an empty string).
    pub tls_ca_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Secret<String>,
    /// `Herald <noreply@example.org>`
    pub from: String,
    pub reply_to: Option<String>,
    pub pool_max_size: u32,
    pub timeout_ms: u64,
    /// Per-tenant From and Reply-To (`HERALD_SMTP__TENANTS__ACME__FROM`).
    pub tenants: HashMap<String, TenantMail>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantMail {
    pub from: Option<String>,
    pub reply_to: Option<String>,
}

impl Default for SmtpSettings {
    fn default() -> Self {
        SmtpSettings {
            host: String::new(),
            port: 587,
            tls: TlsMode::Starttls,
            tls_ca_file: None,
            username: None,
            password: Secret::default(),
            from: String::new(),
            reply_to: None,
            pool_max_size: 10,
            timeout_ms: 15_000,
            tenants: HashMap::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EmailConfig {
    pub smtp: SmtpSettings,
}

/// Sender identity for one tenant, parsed once at start.
#[derive(Debug, Clone)]
struct Identity {
    from: Mailbox,
    reply_to: Option<Mailbox>,
}

pub struct EmailSender {
    connections: Connections,
    default: Identity,
    tenants: HashMap<String, Identity>,
}

fn mailbox(field: &str, value: &str) -> Result<Mailbox, BuildError> {
    value.parse().map_err(|e| BuildError {
        channel: Channel::Email,
        reason: format!("{field} {value:?} is not a mailbox: {e}"),
    })
}

impl ChannelSender for EmailSender {
    const CHANNEL: Channel = Channel::Email;
    type Config = EmailConfig;

    fn default_limits() -> RateLimits {
        RateLimits {
            // A relay's own limits vary; this keeps a burst from one trigger civil.
            account_per_second: 100,
            account_burst: 100,
            recipient_interval: Duration::from_secs(1),
            recipient_burst: 5,
            recipient_windows: Vec::new(),
        }
    }

    async fn build(config: EmailConfig) -> Result<Built<Self>, BuildError> {
        let s = config.smtp;
        if s.host.is_empty() {
            return Ok(Built::NotConfigured(
                "set HERALD_SMTP__HOST and HERALD_SMTP__FROM".into(),
            ));
        }
        if s.from.is_empty() {
            return Ok(Built::NotConfigured("set HERALD_SMTP__FROM".into()));
        }
        let default = Identity {
            from: mailbox("HERALD_SMTP__FROM", &s.from)?,
            // An unset variable arrives as an empty string from compose and Kubernetes.
            reply_to: s
                .reply_to
                .as_deref()
                .filter(|r| !r.trim().is_empty())
                .map(|r| mailbox("HERALD_SMTP__REPLY_TO", r))
                .transpose()?,
        };
        let mut tenants = HashMap::new();
        for (tenant, mail) in &s.tenants {
            let from = match &mail.from {
                Some(from) => mailbox(&format!("HERALD_SMTP__TENANTS__{tenant}__FROM"), from)?,
                None => default.from.clone(),
            };
            let reply_to = match &mail.reply_to {
                Some(reply_to) => Some(mailbox(
                    &format!("HERALD_SMTP__TENANTS__{tenant}__REPLY_TO"),
                    reply_to,
                )?),
                None => default.reply_to.clone(),
            };
            tenants.insert(tenant.to_ascii_lowercase(), Identity { from, reply_to });
        }
        let ca_file = s
            .tls_ca_file
            .as_deref()
            .filter(|path| !path.as_os_str().is_empty());
        let extra_roots = ca_file.map(root_certificates).transpose()?;
        if ca_file.is_some() && s.tls == TlsMode::None {
            tracing::warn!("HERALD_SMTP__TLS_CA_FILE is not used: HERALD_SMTP__TLS is none");
        }
        let tls_parameters = || {
            let mut builder = TlsParameters::builder(s.host.clone());
            if let Some(roots) = &extra_roots {
                builder = builder.add_root_certificate(roots.clone());
            }
            builder.build().map_err(|e| BuildError {
                channel: Channel::Email,
                reason: match ca_file {
                    Some(path) => format!(
                        "TLS for {} with HERALD_SMTP__TLS_CA_FILE {}: {e}",
                        s.host,
                        path.display()
                    ),
                    None => format!("TLS for {}: {e}", s.host),
                },
            })
        };
        let security = match s.tls {
            TlsMode::None => Security::None,
            TlsMode::Starttls => Security::Starttls(tls_parameters()?),
            TlsMode::Tls => Security::Implicit(tls_parameters()?),
        };
        let credentials = s
            .username
            .filter(|u| !u.is_empty())
            .map(|username| Credentials::new(username, s.password.expose().clone()));
        let server = Server {
            host: s.host.clone(),
            port: s.port,
            security,
            credentials,
            timeout: Duration::from_millis(s.timeout_ms),
        };
        Ok(Built::Ready(EmailSender {
            connections: Connections::new(server, s.pool_max_size),
            default,
            tenants,
        }))
    }

    async fn send(&self, job: &SendJob) -> Result<Receipt, SendError> {
        let Address::Email(to) = &job.to else {
            return Err(SendError::permanent(
                "invalid_address",
                "not an email address",
            ));
        };
        let identity = self
            .tenants
            .get(job.tenant.as_str())
            .unwrap_or(&self.default);
        let to: Mailbox = to
            .as_str()
            .parse()
            .map_err(|e| SendError::permanent("invalid_address", format!("{to}: {e}")))?;
        let mut message = Message::builder()
            .from(identity.from.clone())
            .to(to)
            .subject(job.content.subject.clone().unwrap_or_default())
            // The delivery id as Message-ID lets receiving systems drop a duplicate too.
            .message_id(Some(format!("<{}@herald>", job.delivery_id)));
        if let Some(reply_to) = &identity.reply_to {
            message = message.reply_to(reply_to.clone());
        }
        let message = match &job.content.html {
            Some(html) => message.multipart(MultiPart::alternative_plain_html(
                job.content.text.clone(),
                html.clone(),
            )),
            None => message
                .header(ContentType::TEXT_PLAIN)
                .body(job.content.text.clone()),
        }
        .map_err(|e| {
            SendError::permanent("invalid_message", format!("cannot build the email: {e}"))
        })?;

        let envelope = message.envelope().clone();
        match self.connections.send(&envelope, &message.formatted()).await {
            Ok(response) => Ok(Receipt {
                provider_message_id: Some(response.message().collect::<Vec<_>>().join(" "))
                    .filter(|m| !m.is_empty()),
            }),
            Err(SmtpError::Smtp(error)) => Err(classify(&error)),
            Err(error @ SmtpError::Timeout(_)) => {
                Err(SendError::provider_fault("timeout", error.to_string()))
            }
            Err(error @ SmtpError::Connect(..)) => {
                Err(SendError::unhealthy("smtp_unavailable", error.to_string()))
            }
        }
    }

    async fn probe(&self) -> Result<(), String> {
        self.connections.probe().await.map_err(|e| e.to_string())
    }
}

/// Reads `HERALD_SMTP__TLS_CA_FILE` at start, so that a wrong path stops the service instead
/// of failing every send with a TLS error.
fn root_certificates(path: &Path) -> Result<Certificate, BuildError> {
    let error = |what: String| BuildError {
        channel: Channel::Email,
        reason: format!("HERALD_SMTP__TLS_CA_FILE {}: {what}", path.display()),
    };
    let pem = std::fs::read(path).map_err(|e| error(format!("cannot be read: {e}")))?;
    // lettre takes a file without any certificate (a key, a DER file) as an empty list and
    // would then trust nothing more, silently.
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(error("holds no PEM certificate".into()));
    }
    Certificate::from_pem(&pem).map_err(|e| error(format!("is not valid PEM: {e}")))
}

/// SMTP authentication failures: our account, not the recipient.
const AUTH_CODES: &[u16] = &[530, 534, 535, 538];

fn classify(error: &lettre::transport::smtp::Error) -> SendError {
    let code = error.status().map(u16::from);
    let detail = error.to_string();
    if error.is_transient() {
        return SendError::retry("smtp_transient", detail);
    }
    if error.is_permanent() {
        return match code {
            Some(code) if AUTH_CODES.contains(&code) => SendError::unhealthy("smtp_auth", detail),
            Some(550..=553) => SendError::permanent("invalid_address", detail),
            _ => SendError::permanent("rejected", detail),
        };
    }
    if error.is_timeout() {
        return SendError::provider_fault("timeout", detail);
    }
    // Connection refused, TLS failures, garbled answers: the server is not usable now.
    SendError::unhealthy("smtp_unavailable", detail)
}
