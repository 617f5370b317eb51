//! Schemas for the OpenAPI document that say exactly what the handlers enforce: the patterns,
//! lengths and word lists of the values they parse, so a client (or a fuzzer) that follows
//! the document is not refused with 422, and one that breaks it is.
//!
//! Each type here is a named component used through `#[schema(value_type = ...)]` or as a
//! parameter type. The word lists come from the Rust enums' `ALL` lists, and the rules mirror
//! the `parse` constructors in `messaging_core::values`, whose tests pin them down; this
//! module's tests check that the patterns accept and refuse what those constructors do.

use messaging_core::ingress::DeliveryMode;
use messaging_core::{
    AddressKind, AddressState, Channel, DeliveryStatus, MessageSource, MessageStatus, Role,
    RoomChangeKind, RoomState, TicketState,
};
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, Type,
};
use utoipa::openapi::{Deprecated, Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// What `char::is_control` refuses: C0, DEL and C1 (JSON Schema and Python read `\uXXXX`).
pub const CONTROL: &str = r"\u0000-\u001F\u007F-\u009F";
/// What `str::trim` removes (Unicode White_Space), for "not blank" and "trimmed" rules.
pub const SPACE: &str =
    r"\t\n\u000B\u000C\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// Text with at least one character that is not white space; controls refused.
pub fn printable_pattern() -> String {
    format!("^[^{CONTROL}]*[^{CONTROL}{SPACE}][^{CONTROL}]*$")
}

/// What `check_message` refuses: the controls, but tab and newline (a message has lines).
pub const CONTROL_BUT_TAB_NEWLINE: &str = r"\u0000-\u0008\u000B-\u001F\u007F-\u009F";

/// Text over several lines with at least one character that is not white space; tab and
/// newline allowed, other controls refused (`check_message`).
pub fn message_pattern() -> String {
    let c = CONTROL_BUT_TAB_NEWLINE;
    format!("^[^{c}]*[^{c}{SPACE}][^{c}]*$")
}

/// Text with at least one character that is not white space (`check_text`).
pub fn not_blank_pattern() -> String {
    // Unanchored: "contains one such character".
    format!("[^{SPACE}]")
}

/// Optional white space around a value that the API trims.
fn trimmed(inner: &str) -> String {
    format!("^[{SPACE}]*{inner}[{SPACE}]*$")
}

pub fn locale_pattern() -> String {
    trimmed("[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
}

/// The longest template text, in characters.
pub const MAX_TEMPLATE_CHARS: usize = 64 * 1024;

/// The longest staff reply to a support ticket, in characters (the table's `CHECK` too).
pub const MAX_REPLY_CHARS: usize = 4000;

pub const SUBSCRIPTION_ID_PATTERN: &str = "^[A-Za-z_]{1,64}$";
pub const TENANT_PATTERN: &str = "^[a-z][a-z0-9-]{0,62}$";
pub const EVENT_TYPE_PATTERN: &str = "^[a-z0-9_-]+(?:\\.[a-z0-9_-]+)*$";
const DOMAIN: &str = "(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*";

/// An address as `Address::parse` takes it, per channel.
pub fn address_pattern(channel: Channel) -> String {
    match channel {
        // A non-zero i64; 18 digits keep clear of its end.
        Channel::Telegram => trimmed("[-+]?0*[1-9][0-9]{0,17}"),
        // A non-zero u64 as a string.
        Channel::Discord => trimmed("\\+?0*[1-9][0-9]{0,18}"),
        // Captured by the bot only; the API refuses one typed in (`typed_in`).
        Channel::Teams => "^https?://[^\\s@/?#]+[^\\s]* [^\\s]+$".to_owned(),
        Channel::Websocket => trimmed("[a-z0-9][a-z0-9_-]{0,62}/[!-~]{1,120}"),
        Channel::Sms => "^[ .()-]*\\+[ .()-]*[1-9](?:[ .()-]*[0-9]){7,14}[ .()-]*$".to_owned(),
        Channel::Email => {
            let atom = format!("[^{CONTROL}{SPACE}@<>()\\[\\],;:\\\\\".]+");
            format!(
                "^(?=[^@]{{1,64}}@)(?=.{{3,254}}$){atom}(?:\\.{atom})*@(?=.{{1,253}}$){DOMAIN}$"
            )
        }
        Channel::Xmpp => {
            let local = format!("[^{CONTROL}{SPACE}\"&'/:<>@]{{1,1023}}");
            format!("^(?:{local}@)?(?=[^/]{{1,253}}(?:/|$)){DOMAIN}(?:/[^{CONTROL}]{{1,1023}})?$")
        }
    }
}

fn text(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

fn words<'a>(description: &str, words: impl IntoIterator<Item = &'a str>) -> Schema {
    text(description)
        .enum_values(Some(words.into_iter().collect::<Vec<_>>()))
        .into()
}

fn reference<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

fn nullable<T: ToSchema>() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .item(reference::<T>())
        .into()
}

/// A named component with a hand-made schema.
macro_rules! component {
    ($(#[$meta:meta])* $name:ident = $label:literal, $schema:expr) => {
        $(#[$meta])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                RefOr::T($schema)
            }
        }

        impl ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                $label.into()
            }
        }
    };
}

component!(
    /// `Channel`: a delivery channel, as the JSON of the envelope spells it.
    ChannelName = "Channel",
    words(
        "A delivery channel. Where a route parses the word itself (subscribe, addresses, \
         filters), letter case and surrounding white space are ignored.",
        Channel::ALL.iter().map(|c| c.as_str())
    )
);
component!(
    /// A channel whose bot redeems link codes (R5).
    ChatChannelName = "ChatChannel",
    words(
        "A chat channel, whose bot redeems link codes; letter case and surrounding white space \
         are ignored.",
        Channel::ALL
            .iter()
            .filter(|c| c.is_chat())
            .map(|c| c.as_str())
    )
);
component!(
    /// A template's channel segment: a channel, or `default`.
    TemplateChannel = "TemplateChannel",
    words(
        "A channel, or `default` for channels without a template of their own.",
        Channel::ALL
            .iter()
            .map(|c| c.as_str())
            .chain(std::iter::once("default"))
    )
);
component!(
    DeliveryModeName = "DeliveryMode",
    words(
        "`all` of a person's addresses, or only the `preferred` channel (R2).",
        [DeliveryMode::All, DeliveryMode::Preferred].map(DeliveryMode::as_str)
    )
);
component!(
    MessageStatusName = "MessageStatus",
    words(
        "A message's status.",
        MessageStatus::ALL.iter().map(|s| s.as_str())
    )
);
component!(
    MessageSourceName = "MessageSource",
    words(
        "Where a message came from.",
        MessageSource::ALL.iter().map(|s| s.as_str())
    )
);
component!(
    DeliveryStatusName = "DeliveryStatus",
    words(
        "A delivery's status.",
        DeliveryStatus::ALL.iter().map(|s| s.as_str())
    )
);
component!(
    AddressStateName = "AddressState",
    words(
        "An address's reachability (R3, R6).",
        AddressState::ALL.iter().map(|s| s.as_str())
    )
);
component!(
    AddressKindName = "AddressKind",
    words(
        "What kind of address it is.",
        AddressKind::ALL.iter().map(|s| s.as_str())
    )
);
component!(
    RoleName = "Role",
    words(
        "An API key's or token's role.",
        Role::ALL.iter().map(|s| s.as_str())
    )
);
component!(
    TicketStateName = "TicketState",
    words(
        "Where a support ticket is: `open` (nobody answered yet), `answered` (staff replied), \
         `closed`.",
        TicketState::ALL.iter().map(|s| s.as_str())
    )
);
component!(
    RoomStateName = "RoomState",
    words(
        "Where a help-desk room is: `free` (in the pool), `reserved` (handed to a staff member, \
         nobody in yet), `staff_waiting` (the staff member is in), `chatting` (the client came \
         in), `staff_left` or `client_left` (one of them left), `closed` (both left; the room \
         is destroyed and kept as history).",
        RoomState::ALL.iter().map(|s| s.as_str())
    )
);
component!(
    RoomChangeKindName = "RoomChangeKind",
    words(
        "What a room's history entry records: `created` (by the bot, for the pool), \
         `reserved` (for a staff member), `client_assigned`, `state` (someone came in or \
         left), `refused` (a third person was kicked).",
        RoomChangeKind::ALL.iter().map(|s| s.as_str())
    )
);
component!(
    SupportReplyText = "SupportReplyText",
    text(
        "What staff write back to a person's chat: not blank, at most 4000 characters, no \
          control characters but newline and tab."
    )
    .pattern(Some(message_pattern()))
    .min_length(Some(1))
    .max_length(Some(MAX_REPLY_CHARS))
    .into()
);
component!(
    WsNamespaceText = "WebsocketNamespace",
    text("A WebSocket address namespace: what comes before the `/` of `support-bot/42`.")
        .pattern(Some("^[a-z0-9][a-z0-9_-]{0,62}$"))
        .min_length(Some(1))
        .max_length(Some(63))
        .into()
);
component!(
    UserIdText = "UserId",
    text("The tenant's own id for a person: not blank, no control characters, at most 255 bytes in UTF-8.")
        .pattern(Some(printable_pattern()))
        .min_length(Some(1))
        .max_length(Some(255))
        .into()
);
component!(
    IdempotencyKeyText = "IdempotencyKey",
    text("Names one request in the tenant: not blank, no control characters, at most 255 bytes in UTF-8.")
        .pattern(Some(printable_pattern()))
        .min_length(Some(1))
        .max_length(Some(255))
        .into()
);
component!(
    /// As a header it is also visible ASCII: HTTP carries nothing else as text.
    IdempotencyKeyHeader = "IdempotencyKeyHeader",
    text("Names one request in the tenant: visible ASCII and spaces, not blank, at most 255 characters.")
        .pattern(Some(r"^[\u0020-\u007E]*[\u0021-\u007E][\u0020-\u007E]*$"))
        .min_length(Some(1))
        .max_length(Some(255))
        .into()
);
component!(
    SubscriptionIdText = "SubscriptionId",
    text("A subscription's id: ASCII letters and `_`, 1 to 64 characters.")
        .pattern(Some(SUBSCRIPTION_ID_PATTERN))
        .min_length(Some(1))
        .max_length(Some(64))
        .into()
);
component!(
    TenantKeyText = "TenantKey",
    text("A tenant's key: lowercase letters, digits and `-`, starting with a letter, 1 to 63 characters.")
        .pattern(Some(TENANT_PATTERN))
        .min_length(Some(1))
        .max_length(Some(63))
        .into()
);
component!(
    BrokerUserText = "BrokerUser",
    text("A RabbitMQ user name: 1 to 255 characters, no control characters.")
        .pattern(Some(format!("^[^{CONTROL}]+$")))
        .min_length(Some(1))
        .max_length(Some(255))
        .into()
);
component!(
    CountryCodeText = "CountryCode",
    text("A country calling code, 1 to 3 digits without a leading zero, `+` allowed: `41`, `+49`, `1`.")
        .pattern(Some(r"^\+?[1-9][0-9]{0,2}$"))
        .min_length(Some(1))
        .max_length(Some(4))
        .into()
);
component!(
    LocaleText = "Locale",
    text("A BCP 47 language tag such as `en` or `de-CH` (`_` is read as `-`); normalised when stored.")
        .pattern(Some(locale_pattern()))
        .into()
);
component!(
    EventTypeText = "EventType",
    text("Dot-separated lowercase words, like `audit.login`, at most 128 characters.")
        .pattern(Some(EVENT_TYPE_PATTERN))
        .min_length(Some(1))
        .max_length(Some(128))
        .into()
);
component!(
    LabelText = "Label",
    text("A display name: not blank, no control characters, at most 200 characters; trimmed when stored.")
        .pattern(Some(printable_pattern()))
        .min_length(Some(1))
        .max_length(Some(200))
        .into()
);
component!(
    TemplateBody = "TemplateBody",
    text("A MiniJinja template: not blank, at most 65536 characters, checked when written.")
        .pattern(Some(not_blank_pattern()))
        .min_length(Some(1))
        .max_length(Some(MAX_TEMPLATE_CHARS))
        .into()
);
component!(
    TemplateText = "TemplateText",
    text("A MiniJinja template, at most 65536 characters, checked when written.")
        .max_length(Some(MAX_TEMPLATE_CHARS))
        .into()
);
component!(
    CursorText = "Cursor",
    text("The `nextCursor` of the previous page.")
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .into()
);

/// `{"users": [...]}`: the envelope's `to` for a direct message.
fn recipients() -> Schema {
    ObjectBuilder::new()
        .property("users", user_list())
        .required("users")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
        .description(Some("Who is to be notified, as in the envelope's `to`."))
        .into()
}

fn user_list() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(reference::<UserIdText>())
        .min_items(Some(1))
        .max_items(Some(messaging_core::ingress::MAX_USERS_PER_REQUEST))
}

fn closed(object: ObjectBuilder) -> ObjectBuilder {
    object.additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

fn optional_text(description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::String,
            Type::Null,
        ]))
        .description(Some(description))
        .into()
}

fn free_object(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(true)))
        .description(Some(description))
}

component!(
    /// The envelope's `content`: ready text or template data, exactly one of them.
    MessageContent = "MessageContent",
    OneOfBuilder::new()
        .item(
            closed(ObjectBuilder::new().property(
                "direct",
                closed(
                    ObjectBuilder::new()
                        .property("subject", optional_text("For channels that have one (email)."))
                        .property(
                            "body",
                            text("The text: not blank.").pattern(Some(not_blank_pattern())),
                        )
                        .property("html", optional_text("An HTML alternative for email."))
                        .required("body"),
                ),
            ))
            .required("direct")
        )
        .item(
            closed(ObjectBuilder::new().property(
                "template",
                closed(
                    ObjectBuilder::new()
                        .property("subscription", reference::<SubscriptionIdText>())
                        .property("data", free_object("The values the templates see."))
                        .property("locale", nullable::<LocaleText>())
                        .required("subscription"),
                ),
            ))
            .required("template")
        )
        .description(Some(
            "Exactly one of `direct` (ready text) or `template` (data for a subscription's templates)."
        ))
        .into()
);

/// One spelling of a direct message: `recipients` names the field that says who.
fn direct_message(recipient_field: &str, recipients: RefOr<Schema>, deprecated: bool) -> Schema {
    let mut object = ObjectBuilder::new()
        .property(recipient_field, recipients)
        .property("content", reference::<MessageContent>())
        .property(
            "channels",
            OneOfBuilder::new()
                .item(ObjectBuilder::new().schema_type(Type::Null))
                .item(
                    ArrayBuilder::new()
                        .items(reference::<ChannelName>())
                        .min_items(Some(1)),
                ),
        )
        .property("mode", nullable::<DeliveryModeName>())
        .property(
            "expiresAt",
            OneOfBuilder::new()
                .item(ObjectBuilder::new().schema_type(Type::Null))
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
                ),
        )
        .required(recipient_field)
        .required("content");
    if deprecated {
        object = object
            .deprecated(Some(Deprecated::True))
            .description(Some("The older spelling: `userIds` for `to.users`."));
    } else {
        object = object.description(Some("The envelope's spelling: `to.users`."));
    }
    closed(object).into()
}

component!(
    /// `POST /messages`: `to` (the envelope's field), or its older spelling `userIds`.
    DirectMessageBody = "DirectMessageRequest",
    OneOfBuilder::new()
        .item(direct_message("to", recipients().into(), false))
        .item(direct_message("userIds", user_list().into(), true))
        .description(Some(
            "A direct message to people by the tenant's ids for them (R1), in the shape of the \
             versioned envelope (`to`, `content`, `channels`, `mode`, `expiresAt`). `userIds` \
             is accepted instead of `to` for older clients."
        ))
        .into()
);

/// A channel and an address valid for it, as `subscribe` and `POST .../addresses` take them.
/// `captured`: whether addresses only a bot captures (Teams) may be named, as `subscribe` may
/// name a linked one; `POST .../addresses` takes none.
fn address_body(captured: bool, extra: impl Fn(ObjectBuilder, Channel) -> ObjectBuilder) -> Schema {
    let mut one_of = OneOfBuilder::new().description(Some(if captured {
        "`address` must be valid for `channel`: a Telegram chat id, a Discord snowflake, a \
         JID, a mailbox, an E.164 number (spaces, dots, dashes and parentheses are removed), a \
         WebSocket namespace/id, or a linked Teams conversation (service URL, a space, the \
         conversation id, as the address list shows it)."
    } else {
        "`address` must be valid for `channel`: a Telegram chat id, a Discord snowflake, a \
         JID, a mailbox, an E.164 number (spaces, dots, dashes and parentheses are removed), or \
         a WebSocket namespace/id. A Teams address cannot be given: the bot captures it when a person links their chat."
    }));
    for channel in Channel::ALL
        .into_iter()
        .filter(|c| captured || crate::routes::registrations::typed_in(*c))
    {
        let object = ObjectBuilder::new()
            .property("channel", words("The channel.", [channel.as_str()]))
            .property(
                "address",
                text("The address on that channel.").pattern(Some(address_pattern(channel))),
            )
            .required("channel")
            .required("address");
        one_of = one_of.item(closed(extra(object, channel)));
    }
    one_of.into()
}

component!(
    SubscribeBody = "SubscribeRequest",
    // `userId` is required for admins; a user may leave it out (their own). Stated as
    // required, which is what always works.
    address_body(true, |object, _| object
        .property("userId", reference::<UserIdText>())
        .required("userId"))
);

component!(
    NewAddressBody = "NewAddressRequest",
    address_body(false, |object, channel| {
        let object = object.property(
            "displayName",
            OneOfBuilder::new()
                .item(ObjectBuilder::new().schema_type(Type::Null))
                .item(reference::<LabelText>()),
        );
        // A chat bot captures Telegram and Discord addresses (R5); typed in, only an admin's
        // import, marked verified (issue #17), names one.
        let verified = ObjectBuilder::new().schema_type(Type::Boolean);
        let object = if matches!(channel, Channel::Telegram | Channel::Discord) {
            object
                .property("verified", verified.enum_values(Some([true])))
                .required("verified")
        } else {
            object.property("verified", verified)
        };
        // Only an XMPP address may be a multi-user-chat room (R37).
        if channel == Channel::Xmpp {
            object.property("room", ObjectBuilder::new().schema_type(Type::Boolean))
        } else {
            object.property(
                "room",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .enum_values(Some([false])),
            )
        }
    })
);

/// Every component above, for the document's `components`.
pub fn components() -> Vec<(String, RefOr<Schema>)> {
    fn entry<T: ToSchema>() -> (String, RefOr<Schema>) {
        (T::name().into_owned(), T::schema())
    }
    vec![
        entry::<ChannelName>(),
        entry::<ChatChannelName>(),
        entry::<TemplateBody>(),
        entry::<TemplateText>(),
        entry::<TemplateChannel>(),
        entry::<DeliveryModeName>(),
        entry::<MessageStatusName>(),
        entry::<MessageSourceName>(),
        entry::<DeliveryStatusName>(),
        entry::<AddressStateName>(),
        entry::<AddressKindName>(),
        entry::<RoleName>(),
        entry::<TicketStateName>(),
        entry::<RoomStateName>(),
        entry::<RoomChangeKindName>(),
        entry::<SupportReplyText>(),
        entry::<UserIdText>(),
        entry::<IdempotencyKeyText>(),
        entry::<IdempotencyKeyHeader>(),
        entry::<SubscriptionIdText>(),
        entry::<TenantKeyText>(),
        entry::<CountryCodeText>(),
        entry::<BrokerUserText>(),
        entry::<LocaleText>(),
        entry::<EventTypeText>(),
        entry::<LabelText>(),
        entry::<CursorText>(),
        entry::<MessageContent>(),
        entry::<DirectMessageBody>(),
        entry::<SubscribeBody>(),
        entry::<NewAddressBody>(),
    ]
}
