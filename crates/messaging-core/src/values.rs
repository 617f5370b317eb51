//! Validated newtypes for everything that arrives from outside.
//!
//! Each type has a `parse` constructor and deserializes through it, so a value of the type is
//! valid by construction and bad input fails at the edge with a message naming the rule.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value from outside that broke one of our rules. `kind` names the type, `reason` the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct InvalidValue {
    pub kind: &'static str,
    pub reason: String,
}

fn invalid(kind: &'static str, reason: impl Into<String>) -> InvalidValue {
    InvalidValue {
        kind,
        reason: reason.into(),
    }
}

/// The plumbing every string newtype shares: serde through `parse`, `Display`, `as_str`, and a
/// JSON Schema with a description and (where a regex says it exactly) a pattern.
macro_rules! string_newtype {
    ($name:ident, $description:literal $(, pattern = $pattern:literal)? $(, max = $max:literal)?) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                Self::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = Cow::<'de, str>::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                #[allow(unused_mut)]
                let mut schema = json_schema!({ "type": "string", "description": $description });
                $( schema.insert("pattern".into(), $pattern.into()); )?
                $( schema.insert("maxLength".into(), $max.into()); )?
                schema
            }
        }
    };
}

/// A subscription's id (R11): ASCII letters and `_` only, 1 to 64 characters, unique per tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionKey(String);

impl SubscriptionKey {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "subscription id";
        if s.is_empty() {
            return Err(invalid(KIND, "must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(invalid(
                KIND,
                format!("longer than {} characters", Self::MAX_LEN),
            ));
        }
        if let Some(bad) = s.chars().find(|c| !(c.is_ascii_alphabetic() || *c == '_')) {
            return Err(invalid(
                KIND,
                format!("{bad:?} is not allowed; use letters and '_' only"),
            ));
        }
        Ok(SubscriptionKey(s.to_owned()))
    }
}
string_newtype!(
    SubscriptionKey,
    "Subscription id: ASCII letters and '_' only.",
    pattern = "^[A-Za-z_]{1,64}$",
    max = 64
);

/// A tenant's key: lowercase letters, digits and `-`, starting with a letter, 1 to 63
/// characters, so it fits in DNS labels, queue names and URLs unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantKey(String);

impl TenantKey {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "tenant";
        if s.is_empty() || s.len() > 63 {
            return Err(invalid(KIND, "must be 1 to 63 characters"));
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(invalid(KIND, "must start with a lowercase letter"));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(invalid(
                KIND,
                format!("{bad:?} is not allowed; use lowercase letters, digits and '-'"),
            ));
        }
        Ok(TenantKey(s.to_owned()))
    }
}
string_newtype!(
    TenantKey,
    "Tenant key: lowercase letters, digits and '-', starting with a letter.",
    pattern = "^[a-z][a-z0-9-]{0,62}$",
    max = 63
);

/// The tenant's own id for a person (R1): any text without control characters, 1 to 255 bytes.
/// Herald never interprets it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        printable_text("user id", s, 255).map(UserId)
    }
}
string_newtype!(
    UserId,
    "The tenant's own id for a person (1 to 255 bytes, no control characters).",
    max = 255
);

/// A producer's idempotency key: repeats of the same key within a tenant are dropped (R44).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        printable_text("idempotency key", s, 255).map(IdempotencyKey)
    }
}
string_newtype!(
    IdempotencyKey,
    "Idempotency key: repeats within a tenant are dropped (1 to 255 bytes, no control characters).",
    max = 255
);

fn printable_text(kind: &'static str, s: &str, max: usize) -> Result<String, InvalidValue> {
    if s.trim().is_empty() {
        return Err(invalid(kind, "must not be empty"));
    }
    if s.len() > max {
        return Err(invalid(kind, format!("longer than {max} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(kind, "must not contain control characters"));
    }
    Ok(s.to_owned())
}

/// An email address. Checked for shape only (one `@`, a plausible domain); whether the mailbox
/// exists is the SMTP server's answer. The domain is lowercased, the local part kept as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "email address";
        let s = s.trim();
        if s.len() > 254 {
            return Err(invalid(KIND, "longer than 254 characters"));
        }
        let (local, domain) = s
            .rsplit_once('@')
            .ok_or_else(|| invalid(KIND, "missing '@'"))?;
        if local.is_empty() || local.len() > 64 {
            return Err(invalid(
                KIND,
                "the part before '@' must be 1 to 64 characters",
            ));
        }
        if local.contains('@')
            || local
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\\\"".contains(c))
        {
            return Err(invalid(
                KIND,
                "the part before '@' has a character not allowed",
            ));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(invalid(KIND, "misplaced '.' before '@'"));
        }
        let domain = domain.to_ascii_lowercase();
        check_domain(KIND, &domain)?;
        Ok(Email(format!("{local}@{domain}")))
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or_default()
    }
}
string_newtype!(Email, "Email address.", max = 254);

/// Domain names as RFC 1035 labels (letters, digits, '-'), or `localhost`-style single labels,
/// which self-hosted setups use.
fn check_domain(kind: &'static str, domain: &str) -> Result<(), InvalidValue> {
    if domain.is_empty() || domain.len() > 253 {
        return Err(invalid(kind, "the domain must be 1 to 253 characters"));
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(invalid(kind, format!("{domain:?} is not a valid domain")));
        }
    }
    Ok(())
}

/// A phone number in E.164 form: `+`, a country code not starting with 0, 8 to 15 digits in all.
/// Spaces, dashes, dots and parentheses are accepted on input and removed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

impl E164 {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "phone number";
        let compact: String = s
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
            .collect();
        let digits = compact
            .strip_prefix('+')
            .ok_or_else(|| invalid(KIND, "must start with '+' and the country code (E.164)"))?;
        if !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid(KIND, "only digits may follow '+'"));
        }
        if digits.starts_with('0') {
            return Err(invalid(KIND, "a country code never starts with 0"));
        }
        if !(8..=15).contains(&digits.len()) {
            return Err(invalid(KIND, "must have 8 to 15 digits"));
        }
        Ok(E164(compact))
    }
}
string_newtype!(
    E164,
    "Phone number in E.164 form.",
    pattern = "^\\+[1-9][0-9]{7,14}$",
    max = 16
);

/// An XMPP address (`local@domain/resource`, local and resource optional). Used for users
/// (bare JIDs) and for multi-user-chat rooms (`room@conference.example.org`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid(String);

impl Jid {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "JID";
        let s = s.trim();
        let (bare, resource) = match s.split_once('/') {
            Some((bare, resource)) => (bare, Some(resource)),
            None => (s, None),
        };
        let (local, domain) = match bare.split_once('@') {
            Some((local, domain)) => (Some(local), domain),
            None => (None, bare),
        };
        if let Some(local) = local {
            if local.is_empty() || local.len() > 1023 {
                return Err(invalid(KIND, "the part before '@' must be 1 to 1023 bytes"));
            }
            if local
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || "\"&'/:<>@".contains(c))
            {
                return Err(invalid(
                    KIND,
                    "the part before '@' has a character not allowed",
                ));
            }
        }
        let domain = domain.to_ascii_lowercase();
        check_domain(KIND, &domain)?;
        if let Some(resource) = resource
            && (resource.is_empty()
                || resource.len() > 1023
                || resource.chars().any(char::is_control))
        {
            return Err(invalid(
                KIND,
                "the resource must be 1 to 1023 bytes of text",
            ));
        }
        let mut out = String::with_capacity(s.len());
        if let Some(local) = local {
            out.push_str(local);
            out.push('@');
        }
        out.push_str(&domain);
        if let Some(resource) = resource {
            out.push('/');
            out.push_str(resource);
        }
        Ok(Jid(out))
    }

    /// The JID without its resource.
    pub fn bare(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(bare, _)| bare)
    }
}
string_newtype!(
    Jid,
    "XMPP address: local@domain, optionally with /resource.",
    max = 3071
);

/// A BCP 47 language tag, normalised (`de`, `de-CH`, `zh-Hant-TW`): language lowercase,
/// script title case, region uppercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locale(String);

impl Locale {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "locale";
        let mut parts = s.trim().split(['-', '_']);
        let language = parts.next().unwrap_or_default();
        if !(2..=3).contains(&language.len()) || !language.chars().all(|c| c.is_ascii_alphabetic())
        {
            return Err(invalid(
                KIND,
                format!("{s:?} must start with a 2 or 3 letter language code"),
            ));
        }
        let mut out = language.to_ascii_lowercase();
        for part in parts {
            if part.is_empty() || part.len() > 8 || !part.chars().all(|c| c.is_ascii_alphanumeric())
            {
                return Err(invalid(
                    KIND,
                    format!("{s:?} has a malformed subtag {part:?}"),
                ));
            }
            out.push('-');
            match part.len() {
                2 if part.chars().all(|c| c.is_ascii_alphabetic()) => {
                    out.push_str(&part.to_ascii_uppercase())
                }
                4 if part.chars().all(|c| c.is_ascii_alphabetic()) => {
                    out.push_str(&part[..1].to_ascii_uppercase());
                    out.push_str(&part[1..].to_ascii_lowercase());
                }
                _ => out.push_str(part),
            }
        }
        Ok(Locale(out))
    }

    /// This locale and its less specific parents, most specific first: `de-CH` -> `de-CH`, `de`.
    /// Template lookup walks this list before the subscription's fallback locale (R13).
    pub fn lookup_chain(&self) -> impl Iterator<Item = &str> {
        let s = self.0.as_str();
        let cuts = s.match_indices('-').map(|(i, _)| i).collect::<Vec<_>>();
        std::iter::once(s).chain(cuts.into_iter().rev().map(move |i| &s[..i]))
    }
}
string_newtype!(Locale, "BCP 47 language tag such as de or de-CH.", max = 35);

/// A Microsoft Teams conversation the bot may write to (R38): the Bot Connector's service URL
/// for it and the conversation id, both as the Bot Framework sent them in an activity. Text
/// form: the two, separated by one space (neither may hold white space), so it is stored and
/// rate-limited as one value:
/// `https://smba.trafficmanager.net/emea/ a:1Xyz...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TeamsChat(String);

impl TeamsChat {
    pub const MAX_URL_LEN: usize = 512;
    pub const MAX_ID_LEN: usize = 512;

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let mut parts = s.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(url), Some(id), None) => Self::new(url, id),
            _ => Err(invalid(
                "Teams conversation",
                "expected the service URL and the conversation id, separated by a space",
            )),
        }
    }

    /// From an activity's `serviceUrl` and `conversation.id`.
    pub fn new(service_url: &str, conversation_id: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "Teams conversation";
        let rest = service_url
            .strip_prefix("https://")
            .or_else(|| service_url.strip_prefix("http://"))
            .ok_or_else(|| invalid(KIND, "the service URL must be an http(s) URL"))?;
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if host.is_empty() || host.contains('@') {
            return Err(invalid(
                KIND,
                "the service URL needs a host (and no user info)",
            ));
        }
        if service_url.len() > Self::MAX_URL_LEN {
            return Err(invalid(
                KIND,
                format!("the service URL is longer than {}", Self::MAX_URL_LEN),
            ));
        }
        if conversation_id.is_empty() || conversation_id.len() > Self::MAX_ID_LEN {
            return Err(invalid(
                KIND,
                format!(
                    "the conversation id must be 1 to {} bytes",
                    Self::MAX_ID_LEN
                ),
            ));
        }
        let bad = |c: char| c.is_whitespace() || c.is_control();
        if service_url.chars().any(bad) || conversation_id.chars().any(bad) {
            return Err(invalid(KIND, "white space or a control character"));
        }
        Ok(TeamsChat(format!("{service_url} {conversation_id}")))
    }

    /// The Bot Connector's base URL for this conversation.
    pub fn service_url(&self) -> &str {
        self.0
            .split_once(' ')
            .map(|(url, _)| url)
            .unwrap_or_default()
    }

    pub fn conversation_id(&self) -> &str {
        self.0.split_once(' ').map(|(_, id)| id).unwrap_or_default()
    }
}
string_newtype!(
    TeamsChat,
    "A Microsoft Teams conversation: the Bot Connector service URL and the conversation id, separated by a space.",
    pattern = "^https?://[^\\s@/?#]+[^\\s]* [^\\s]+$",
    max = 1025
);

/// What a tenant's WebSocket clients register for (R39): a namespace (the client program's
/// name, what its token may receive for) and an id within it, `support-bot/42`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WsKey(String);

impl WsKey {
    /// With the tenant and the namespace it makes an AMQP routing key (at most 255 bytes).
    pub const MAX_ID_LEN: usize = 120;

    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const KIND: &str = "WebSocket address";
        let s = s.trim();
        let (namespace, id) = s
            .split_once('/')
            .ok_or_else(|| invalid(KIND, "expected namespace/id, as in support-bot/42"))?;
        let namespace_ok = !namespace.is_empty()
            && namespace.len() <= 63
            && namespace.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !namespace_ok {
            return Err(invalid(
                KIND,
                "the namespace is 1 to 63 of a-z, 0-9, '-' and '_', starting with a letter or digit",
            ));
        }
        // Visible ASCII: an id names a client's record, it travels in a routing key (255
        // bytes at most), and the API's schema states the rule as a pattern.
        if id.is_empty() || id.len() > Self::MAX_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                KIND,
                format!(
                    "the id is 1 to {} visible ASCII characters",
                    Self::MAX_ID_LEN
                ),
            ));
        }
        Ok(WsKey(s.to_owned()))
    }

    pub fn namespace(&self) -> &str {
        self.0.split_once('/').map(|(ns, _)| ns).unwrap_or_default()
    }
}
string_newtype!(
    WsKey,
    "A WebSocket address: namespace/id, as in support-bot/42.",
    pattern = "^[a-z0-9][a-z0-9_-]{0,62}/[^\\s]{1,120}$",
    max = 184
);

/// A Telegram chat id. Negative for groups and channels, so it is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChatId(pub i64);

impl ChatId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        s.trim()
            .parse::<i64>()
            .ok()
            .filter(|id| *id != 0)
            .map(ChatId)
            .ok_or_else(|| {
                invalid(
                    "Telegram chat id",
                    format!("{s:?} is not a non-zero integer"),
                )
            })
    }
}

impl fmt::Display for ChatId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl JsonSchema for ChatId {
    fn schema_name() -> Cow<'static, str> {
        "ChatId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "integer", "description": "Telegram chat id (negative for groups).", "not": { "const": 0 } })
    }
}

/// A Discord snowflake (user or channel id). Carried as a string in JSON, like Discord does,
/// because it exceeds JavaScript's safe integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiscordId(pub u64);

impl DiscordId {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        s.trim()
            .parse::<u64>()
            .ok()
            .filter(|id| *id != 0)
            .map(DiscordId)
            .ok_or_else(|| {
                invalid(
                    "Discord id",
                    format!("{s:?} is not a snowflake (a positive integer)"),
                )
            })
    }
}

impl fmt::Display for DiscordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for DiscordId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DiscordId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Cow::<'de, str>::deserialize(d)?;
        DiscordId::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DiscordId {
    fn schema_name() -> Cow<'static, str> {
        "DiscordId".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "description": "Discord snowflake id, as a string.", "pattern": "^[1-9][0-9]{0,19}$" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_keys_allow_letters_and_underscore_only() {
        assert!(SubscriptionKey::parse("order_Shipped").is_ok());
        for bad in [
            "",
            "order-shipped",
            "order shipped",
            "order1",
            "ünicode",
            &"a".repeat(65),
        ] {
            assert!(
                SubscriptionKey::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        let err = SubscriptionKey::parse("a-b").unwrap_err().to_string();
        assert!(err.contains("'-'"), "{err}");
    }

    #[test]
    fn tenant_keys_are_dns_safe() {
        assert!(TenantKey::parse("acme-2").is_ok());
        for bad in ["", "Acme", "2acme", "ac_me", "ac.me"] {
            assert!(TenantKey::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn emails_are_checked_for_shape_and_domain_is_lowercased() {
        assert_eq!(
            Email::parse("Ann.Lee@Example.ORG").unwrap().as_str(),
            "Ann.Lee@example.org"
        );
        assert!(Email::parse("root@localhost").is_ok());
        for bad in [
            "",
            "no-at",
            "@x.org",
            "a@",
            "a b@x.org",
            "a@x..org",
            "a@-x.org",
            ".a@x.org",
            "a@b@c.org",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn e164_numbers_are_normalised() {
        assert_eq!(
            E164::parse("+41 (79) 123-45-67").unwrap().as_str(),
            "+41791234567"
        );
        for bad in [
            "0791234567",
            "+0791234567",
            "+41",
            "+4179123456789012",
            "+41abc12345",
        ] {
            assert!(E164::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn jids_keep_local_part_and_resource_and_lowercase_the_domain() {
        let jid = Jid::parse("Ann@Example.org/phone").unwrap();
        assert_eq!(jid.as_str(), "Ann@example.org/phone");
        assert_eq!(jid.bare(), "Ann@example.org");
        assert!(Jid::parse("conference.localhost").is_ok());
        for bad in ["", "a b@x.org", "@x.org", "a@", "a@x.org/"] {
            assert!(Jid::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn locales_are_normalised_and_walk_to_their_parents() {
        let locale = Locale::parse("zh_hant_tw").unwrap();
        assert_eq!(locale.as_str(), "zh-Hant-TW");
        assert_eq!(
            locale.lookup_chain().collect::<Vec<_>>(),
            ["zh-Hant-TW", "zh-Hant", "zh"]
        );
        assert_eq!(
            Locale::parse("de")
                .unwrap()
                .lookup_chain()
                .collect::<Vec<_>>(),
            ["de"]
        );
        for bad in ["", "d", "deutsch", "de-", "de-CH!"] {
            assert!(Locale::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn chat_and_discord_ids_reject_zero_and_garbage() {
        let key = WsKey::parse("support-bot/42").unwrap();
        assert_eq!(key.namespace(), "support-bot");
        assert!(WsKey::parse("Support/42").is_err());
        assert!(WsKey::parse("support-bot/").is_err());
        assert!(WsKey::parse("nonamespace").is_err());
        assert!(WsKey::parse("a/b c").is_err());
        assert!(WsKey::parse("a/b\u{85}c").is_err(), "NEL is white space");
        assert!(WsKey::parse("a/caf\u{e9}").is_err(), "ASCII only");
        assert!(WsKey::parse(" a/b-1:x ").is_ok(), "trimmed");
        let chat = TeamsChat::new("https://smba.trafficmanager.net/emea/", "a:1Xyz_-9").unwrap();
        assert_eq!(chat.service_url(), "https://smba.trafficmanager.net/emea/");
        assert_eq!(chat.conversation_id(), "a:1Xyz_-9");
        assert_eq!(TeamsChat::parse(chat.as_str()).unwrap(), chat);
        assert!(TeamsChat::new("ftp://x/", "a:1").is_err());
        assert!(TeamsChat::new("https://user@evil.example/", "a:1").is_err());
        assert!(TeamsChat::new("https://smba.trafficmanager.net/", "a 1").is_err());
        assert!(TeamsChat::parse("https://smba.trafficmanager.net/").is_err());
        assert_eq!(ChatId::parse("-100123").unwrap(), ChatId(-100123));
        assert!(ChatId::parse("0").is_err());
        assert!(ChatId::parse("abc").is_err());
        let id: DiscordId = serde_json::from_str("\"80351110224678912\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"80351110224678912\"");
        assert!(serde_json::from_str::<DiscordId>("\"-1\"").is_err());
    }

    #[test]
    fn deserializing_runs_the_same_validation() {
        let err = serde_json::from_str::<SubscriptionKey>("\"a-b\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid subscription id"), "{err}");
        let err = serde_json::from_str::<UserId>("\"\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("user id"), "{err}");
    }
}
