//! Stage 1, planning: each recipient's addresses become planned deliveries. A pending one
//! carries the job to publish; a failed one (no address, an address that does not parse, a
//! template that does not render) carries only its row, so the producer learns why (R4 b).

use std::sync::Arc;

use herald_storage::deliveries::{DeliveryFailure, NewDelivery};
use herald_storage::registrations::RegistrationRecipient;
use herald_storage::users::UserRecipient;
use messaging_core::failure::Failure;
use messaging_core::ingress::DeliveryMode;
use messaging_core::job::RenderedContent;
use messaging_core::values::{Locale, UserId};
use messaging_core::{Address, AddressKind, Channel};
use uuid::Uuid;

use super::Body;

/// One delivery as planned: the row, and for a pending one the job to publish.
pub(super) struct Planned {
    pub row: NewDelivery,
    pub job: Option<PlannedJob>,
}

pub(super) struct PlannedJob {
    pub to: Address,
    pub user_id: Option<UserId>,
    pub content: Arc<RenderedContent>,
}

/// What the request asks of every recipient's addresses.
pub(super) struct Choice<'a> {
    /// Only these channels; `None`, all.
    pub channels: Option<&'a [Channel]>,
    /// Overrides each person's own delivery mode.
    pub mode: Option<DeliveryMode>,
    /// Overrides each person's own locale.
    pub locale: Option<&'a Locale>,
}

/// The deliveries of one page of recipients.
pub(super) fn page(
    recipients: super::pages::Page,
    choice: &Choice<'_>,
    body: &mut Body,
) -> Vec<Planned> {
    let mut out = Vec::new();
    match recipients {
        super::pages::Page::Users(people) => {
            for person in &people {
                plan_user(person, choice, body, &mut out);
            }
        }
        super::pages::Page::Registrations(registrations) => {
            out.extend(
                registrations
                    .iter()
                    .map(|r| plan_registration(r, choice, body)),
            );
        }
    }
    out
}

fn render(
    body: &mut Body,
    channel: Channel,
    requested: Option<&Locale>,
    own: Option<&str>,
) -> Result<Arc<RenderedContent>, Failure> {
    match body {
        Body::Direct(content) => Ok(content.clone()),
        Body::Templates(templates) => templates.render(channel, requested, own),
    }
}

/// A registration (R12): its channel's address.
fn plan_registration(r: &RegistrationRecipient, choice: &Choice<'_>, body: &mut Body) -> Planned {
    plan_address(
        Some(r.user_id),
        &r.external_id,
        Some(r.address_id),
        r.address_kind,
        &r.address,
        |channel| render(body, channel, choice.locale, r.locale.as_deref()),
    )
}

/// A user's deliveries (R2): the active addresses on the requested channels; with mode
/// `preferred` only those on the user's preferred channel when there are any. No address at
/// all is a failed delivery (`no_address`), so the producer learns it (R4 b).
fn plan_user(person: &UserRecipient, choice: &Choice<'_>, body: &mut Body, out: &mut Vec<Planned>) {
    let mode = choice.mode.unwrap_or(person.delivery_mode);
    let wanted = |channel: Channel| choice.channels.is_none_or(|cs| cs.contains(&channel));
    let mut addresses: Vec<_> = person
        .addresses
        .iter()
        .filter(|a| wanted(a.channel()))
        .collect();
    if mode == DeliveryMode::Preferred
        && let Some(preferred) = person.preferred_channel
        && addresses.iter().any(|a| a.channel() == preferred)
    {
        addresses.retain(|a| a.channel() == preferred);
    }
    if addresses.is_empty() {
        let why = if person.addresses.is_empty() {
            format!("user {} has no proven, active address", person.external_id)
        } else {
            format!(
                "user {} has no proven, active address on the requested channels",
                person.external_id
            )
        };
        out.push(Planned {
            row: NewDelivery {
                id: Uuid::now_v7(),
                user_id: Some(person.id),
                address_id: None,
                channel: None,
                address: None,
                failure: Some(failure_row(&Failure::permanent("no_address", why))),
            },
            job: None,
        });
        return;
    }
    for address in addresses {
        out.push(plan_address(
            Some(person.id),
            &person.external_id,
            Some(address.id),
            address.kind,
            &address.value,
            |channel| render(body, channel, choice.locale, person.locale.as_deref()),
        ));
    }
}

/// One address's delivery: pending with its job, or failed when the stored address does not
/// parse or its content cannot be rendered.
fn plan_address(
    user_id: Option<Uuid>,
    external_id: &str,
    address_id: Option<Uuid>,
    kind: AddressKind,
    value: &str,
    content: impl FnOnce(Channel) -> Result<Arc<RenderedContent>, Failure>,
) -> Planned {
    let channel = kind.channel();
    let failed = |value: &str, failure: Failure| Planned {
        row: NewDelivery {
            id: Uuid::now_v7(),
            user_id,
            address_id,
            channel: Some(channel),
            address: Some(value.to_owned()),
            failure: Some(failure_row(&failure)),
        },
        job: None,
    };
    let to = match Address::from_kind(kind, value) {
        Ok(to) => to,
        Err(invalid) => {
            return failed(
                value,
                Failure::permanent("invalid_address", invalid.to_string()),
            );
        }
    };
    // Stored normalised, so a later pass computes the same key for the same address.
    let value = to.value();
    match content(channel) {
        Ok(content) => Planned {
            row: NewDelivery {
                id: Uuid::now_v7(),
                user_id,
                address_id,
                channel: Some(channel),
                address: Some(value),
                failure: None,
            },
            job: Some(PlannedJob {
                to,
                user_id: UserId::parse(external_id).ok(),
                content,
            }),
        },
        Err(failure) => failed(&value, failure),
    }
}

fn failure_row(failure: &Failure) -> DeliveryFailure {
    DeliveryFailure {
        class: failure.class,
        code: failure.code.clone(),
        message: failure.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_storage::users::ActiveAddress;

    fn person(
        mode: DeliveryMode,
        preferred: Option<Channel>,
        addresses: &[(AddressKind, &str)],
    ) -> UserRecipient {
        UserRecipient {
            id: Uuid::now_v7(),
            external_id: "u-1".into(),
            locale: None,
            preferred_channel: preferred,
            delivery_mode: mode,
            addresses: addresses
                .iter()
                .map(|(kind, value)| ActiveAddress {
                    id: Uuid::now_v7(),
                    kind: *kind,
                    value: value.to_string(),
                })
                .collect(),
        }
    }

    fn direct() -> Body {
        Body::Direct(Arc::new(RenderedContent {
            subject: None,
            text: "hi".into(),
            html: None,
        }))
    }

    fn plan(
        p: &UserRecipient,
        channels: Option<&[Channel]>,
        mode: Option<DeliveryMode>,
    ) -> Vec<Planned> {
        let mut out = Vec::new();
        let choice = Choice {
            channels,
            mode,
            locale: None,
        };
        plan_user(p, &choice, &mut direct(), &mut out);
        out
    }

    fn channels_of(planned: &[Planned]) -> Vec<Option<Channel>> {
        planned.iter().map(|p| p.row.channel).collect()
    }

    const THREE: [(AddressKind, &str); 3] = [
        (AddressKind::Email, "ann@example.org"),
        (AddressKind::Sms, "+41791234567"),
        (AddressKind::Telegram, "42"),
    ];

    #[test]
    fn mode_all_uses_every_active_address_on_the_requested_channels() {
        let p = person(DeliveryMode::All, Some(Channel::Sms), &THREE);
        assert_eq!(plan(&p, None, None).len(), 3);
        let only = plan(&p, Some(&[Channel::Email, Channel::Discord]), None);
        assert_eq!(channels_of(&only), [Some(Channel::Email)]);
    }

    #[test]
    fn mode_preferred_uses_the_preferred_channel_or_falls_back_to_all() {
        let p = person(DeliveryMode::Preferred, Some(Channel::Sms), &THREE);
        assert_eq!(channels_of(&plan(&p, None, None)), [Some(Channel::Sms)]);
        // The request's mode overrides the user's.
        assert_eq!(plan(&p, None, Some(DeliveryMode::All)).len(), 3);
        let elsewhere = person(DeliveryMode::Preferred, Some(Channel::Discord), &THREE);
        assert_eq!(plan(&elsewhere, None, None).len(), 3);
    }

    #[test]
    fn no_address_is_a_failed_delivery_not_silence() {
        let nobody = plan(&person(DeliveryMode::All, None, &[]), None, None);
        assert_eq!(nobody.len(), 1);
        let failure = nobody[0].row.failure.as_ref().unwrap();
        assert_eq!(
            (failure.class, failure.code.as_str()),
            (messaging_core::FailureClass::Permanent, "no_address")
        );
        assert!(nobody[0].row.channel.is_none() && nobody[0].job.is_none());
        let filtered = plan(
            &person(DeliveryMode::All, None, &THREE),
            Some(&[Channel::Xmpp]),
            None,
        );
        assert!(
            filtered[0]
                .row
                .failure
                .as_ref()
                .unwrap()
                .message
                .contains("requested channels")
        );
    }

    #[test]
    fn a_stored_address_that_does_not_parse_fails_with_invalid_address() {
        let p = person(
            DeliveryMode::All,
            None,
            &[
                (AddressKind::Sms, "not a number"),
                (AddressKind::XmppRoom, "room@muc.example.org"),
            ],
        );
        let planned = plan(&p, None, None);
        assert_eq!(
            planned[0].row.failure.as_ref().unwrap().code,
            "invalid_address"
        );
        let room = planned[1].job.as_ref().unwrap();
        assert!(matches!(room.to, Address::XmppRoom(_)));
    }
}
