//! The stanzas the bot sends, and what the server's refusals mean for a delivery.

use tokio_xmpp::jid::{BareJid, FullJid, Jid};
use tokio_xmpp::minidom::Element;
use tokio_xmpp::parsers::data_forms::{DataForm, DataFormType, Field, FieldType};
use tokio_xmpp::parsers::message::{Lang, Message};
use tokio_xmpp::parsers::muc::Muc;
use tokio_xmpp::parsers::muc::muc::History;
use tokio_xmpp::parsers::presence::{Presence, Type as PresenceType};
use tokio_xmpp::parsers::stanza_error::{DefinedCondition, StanzaError};

use sender_runtime::SendError;

pub const NS_MUC_OWNER: &str = "http://jabber.org/protocol/muc#owner";
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const NS_DATA: &str = "jabber:x:data";

/// The job's text as one body: the subject, if any, as a first line of its own.
pub fn body(subject: Option<&str>, text: &str) -> String {
    match subject.map(str::trim).filter(|s| !s.is_empty()) {
        Some(subject) => format!("{subject}\n\n{text}"),
        None => text.to_owned(),
    }
}

pub fn chat(to: Jid, body: String) -> Message {
    Message::chat(to).with_body(Lang::default(), body)
}

pub fn groupchat(room: BareJid, body: String) -> Message {
    Message::groupchat(Jid::from(room)).with_body(Lang::default(), body)
}

/// Joining a room as `nick`, with its password, asking for no history (the bot reads none).
pub fn join(occupant: FullJid, password: Option<&str>) -> Presence {
    let mut muc = Muc::new().with_history(History::new().with_maxstanzas(0));
    if let Some(password) = password {
        muc = muc.with_password(password.to_owned());
    }
    Presence::available()
        .with_to(Jid::from(occupant))
        .with_payload(muc)
}

pub fn leave(occupant: FullJid) -> Presence {
    Presence::new(PresenceType::Unavailable).with_to(Jid::from(occupant))
}

/// The room configuration of a help-desk room (XEP-0045 §10.1.3, `muc#roomconfig`): hidden,
/// temporary, password-protected, no invitations, real JIDs for moderators only, no history
/// stored or replayed; `max_users` where the server takes it.
pub fn room_config(password: &str, max_users: Option<u32>) -> Element {
    let mut fields = vec![
        text_field("muc#roomconfig_roomname", "Herald help desk"),
        boolean("muc#roomconfig_publicroom", false),
        boolean("muc#roomconfig_persistentroom", false),
        boolean("muc#roomconfig_passwordprotectedroom", true),
        Field::new("muc#roomconfig_roomsecret", FieldType::TextPrivate).with_value(password),
        boolean("muc#roomconfig_allowinvites", false),
        boolean("muc#roomconfig_membersonly", false),
        boolean("muc#roomconfig_moderatedroom", false),
        text_field("muc#roomconfig_whois", "moderators"),
        text_field("muc#roomconfig_historylength", "0"),
        text_field("muc#maxhistoryfetch", "0"),
        boolean("muc#roomconfig_enablelogging", false),
        boolean("muc#roomconfig_changesubject", false),
    ];
    if let Some(max) = max_users {
        fields.push(text_field("muc#roomconfig_maxusers", &max.to_string()));
    }
    let form = DataForm::new(
        DataFormType::Submit,
        "http://jabber.org/protocol/muc#roomconfig",
        fields,
    );
    Element::builder("query", NS_MUC_OWNER)
        .append(Element::from(form))
        .build()
}

/// The owner's `<destroy/>` (XEP-0045 §10.9): everyone is removed and the room is gone.
pub fn destroy_room(reason: &str) -> Element {
    Element::builder("query", NS_MUC_OWNER)
        .append(
            Element::builder("destroy", NS_MUC_OWNER)
                .append(
                    Element::builder("reason", NS_MUC_OWNER)
                        .append(reason)
                        .build(),
                )
                .build(),
        )
        .build()
}

/// A moderator's kick (XEP-0045 §8.2): the occupant's role becomes `none`.
pub fn kick(nick: &str, reason: &str) -> Element {
    Element::builder("query", NS_MUC_ADMIN)
        .append(
            Element::builder("item", NS_MUC_ADMIN)
                .attr(name("nick"), nick)
                .attr(name("role"), "none")
                .append(
                    Element::builder("reason", NS_MUC_ADMIN)
                        .append(reason)
                        .build(),
                )
                .build(),
        )
        .build()
}

/// An attribute name known to be valid.
fn name(name: &'static str) -> tokio_xmpp::minidom::rxml::NcName {
    tokio_xmpp::minidom::rxml::NcName::try_from(name)
        .unwrap_or_else(|_| unreachable!("{name} is a valid XML name"))
}

/// The owner's request for the configuration form (to learn which fields the server offers).
pub fn config_request() -> Element {
    Element::builder("query", NS_MUC_OWNER).build()
}

/// The `var`s of the fields a configuration form offers.
pub fn form_fields(query: &Element) -> Vec<String> {
    query
        .get_child("x", NS_DATA)
        .map(|form| {
            form.children()
                .filter(|c| c.name() == "field")
                .filter_map(|c| c.attr("var").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The choices a list field offers (`muc#roomconfig_maxusers` lists the allowed caps).
pub fn field_options(query: &Element, var: &str) -> Vec<String> {
    query
        .get_child("x", NS_DATA)
        .into_iter()
        .flat_map(|form| form.children())
        .filter(|c| c.name() == "field" && c.attr("var") == Some(var))
        .flat_map(|field| field.children())
        .filter(|c| c.name() == "option")
        .filter_map(|option| option.get_child("value", NS_DATA).map(Element::text))
        .collect()
}

fn boolean(var: &str, value: bool) -> Field {
    Field::new(var, FieldType::Boolean).with_value(if value { "1" } else { "0" })
}

fn text_field(var: &str, value: &str) -> Field {
    Field::new(var, FieldType::TextSingle).with_value(value)
}

/// What a refusal of a message means for the delivery.
///
/// | condition | kind | code |
/// |---|---|---|
/// | `item-not-found`, `service-unavailable`, `remote-server-not-found` (to a JID) | permanent: address unreachable (R6) | `unknown_recipient` |
/// | `forbidden`, `not-allowed`, `not-acceptable`, `registration-required` (a room) | permanent | `refused` |
/// | `remote-server-timeout`, `resource-constraint`, `internal-server-error`, anything else of type `wait` | retry | `server_error` |
/// | `policy-violation` (server-side rate limits) | retry, throttled | `rate_limited` |
/// | anything else | permanent | `rejected` |
pub fn classify(error: &StanzaError) -> SendError {
    use DefinedCondition as C;
    let condition = condition_name(&error.defined_condition);
    let text = error
        .texts
        .values()
        .next()
        .map(|t| format!("{condition}: {t}"))
        .unwrap_or_else(|| condition.to_owned());
    match error.defined_condition {
        C::ItemNotFound | C::ServiceUnavailable | C::RemoteServerNotFound => {
            SendError::permanent("unknown_recipient", text)
        }
        C::Forbidden | C::NotAllowed | C::NotAcceptable | C::RegistrationRequired => {
            SendError::permanent("refused", text)
        }
        C::PolicyViolation => SendError::throttled(None, text),
        C::RemoteServerTimeout | C::ResourceConstraint | C::InternalServerError => {
            SendError::provider_fault("server_error", text)
        }
        _ if error.type_ == tokio_xmpp::parsers::stanza_error::ErrorType::Wait => {
            SendError::provider_fault("server_error", text)
        }
        _ => SendError::permanent("rejected", text),
    }
}

/// The condition's element name, as the RFC spells it.
pub fn condition_name(condition: &DefinedCondition) -> String {
    Element::from(condition.clone()).name().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_xmpp::parsers::stanza_error::ErrorType;

    fn error(condition: DefinedCondition, type_: ErrorType) -> StanzaError {
        StanzaError::new(type_, condition, "en", "")
    }

    #[test]
    fn a_missing_recipient_is_permanent_and_named() {
        for condition in [
            DefinedCondition::ItemNotFound,
            DefinedCondition::ServiceUnavailable,
            DefinedCondition::RemoteServerNotFound,
        ] {
            let SendError::Permanent(failure) = classify(&error(condition, ErrorType::Cancel))
            else {
                panic!("permanent expected");
            };
            assert_eq!(failure.code, "unknown_recipient");
        }
    }

    #[test]
    fn server_trouble_is_retried_and_policy_throttles() {
        assert!(matches!(
            classify(&error(DefinedCondition::RemoteServerTimeout, ErrorType::Wait)),
            SendError::Retry(r) if r.provider_fault
        ));
        assert!(matches!(
            classify(&error(DefinedCondition::PolicyViolation, ErrorType::Wait)),
            SendError::Retry(r) if r.throttles_account
        ));
        assert!(matches!(
            classify(&error(DefinedCondition::Forbidden, ErrorType::Auth)),
            SendError::Permanent(f) if f.code == "refused"
        ));
    }

    #[test]
    fn condition_names_are_the_rfcs() {
        assert_eq!(
            condition_name(&DefinedCondition::RemoteServerNotFound),
            "remote-server-not-found"
        );
    }

    #[test]
    fn the_room_form_hides_protects_and_keeps_no_history() {
        let query = room_config("s3cret", Some(3));
        let fields = form_fields(&query);
        for var in [
            "muc#roomconfig_publicroom",
            "muc#roomconfig_persistentroom",
            "muc#roomconfig_passwordprotectedroom",
            "muc#roomconfig_roomsecret",
            "muc#roomconfig_whois",
            "muc#roomconfig_historylength",
            "muc#roomconfig_maxusers",
        ] {
            assert!(fields.iter().any(|f| f == var), "{var} missing: {fields:?}");
        }
        let xml = String::from(&query);
        assert!(xml.contains("s3cret"));
    }

    #[test]
    fn a_subject_becomes_the_first_line() {
        assert_eq!(body(Some("Order 7"), "Shipped."), "Order 7\n\nShipped.");
        assert_eq!(body(Some("  "), "Shipped."), "Shipped.");
    }
}
