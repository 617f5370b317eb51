//! A subscription's templates for one message (R13): which template a recipient gets, and its
//! text rendered with the trigger's data.
//!
//! Choice: the requested locale, then the recipient's own, then the subscription's fallback
//! locale, each from most to least specific (`de-CH`, then `de`); within a locale the
//! template for the recipient's channel before the one for any channel.
//!
//! Each template is compiled once per message, on first use. The templates see only the
//! trigger's data, which is the same for every recipient, so the text is rendered once per
//! template as well and shared: a fan-out to 100k people renders a handful of times.

use std::collections::HashMap;
use std::sync::Arc;

use herald_storage::templates::Template;
use messaging_core::Channel;
use messaging_core::failure::Failure;
use messaging_core::job::RenderedContent;
use messaging_core::values::Locale;
use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Upper bound of the work one template may do. Templates are written by tenants; this stops
/// a runaway loop from holding a router slot, and is far above what a notification needs.
const FUEL: u64 = 1_000_000;

pub struct Templates {
    rows: Vec<Choice>,
    fallback_locale: Option<Locale>,
    env: Environment<'static>,
    data: minijinja::Value,
    /// Per template: the rendered text, or why it could not be rendered.
    rendered: HashMap<Uuid, Result<Arc<RenderedContent>, Failure>>,
}

/// A template row, and the channel it is for (`None`: any channel).
struct Choice {
    channel: Option<Channel>,
    row: Template,
}

impl Templates {
    /// `rows`: all templates of the subscription; `fallback_locale`: the subscription's.
    pub fn new(rows: Vec<Template>, fallback_locale: &str, data: &Map<String, Value>) -> Self {
        let mut env = Environment::new();
        // A misspelt or missing parameter fails the delivery with a clear `template_error`
        // instead of sending "Your order  has shipped"; `is defined` and `default` still work.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.set_fuel(Some(FUEL));
        let rows = rows
            .into_iter()
            .map(|row| Choice {
                channel: row.channel,
                row,
            })
            .collect();
        Templates {
            rows,
            fallback_locale: Locale::parse(fallback_locale).ok(),
            env,
            data: minijinja::Value::from(Serde(data)),
            rendered: HashMap::new(),
        }
    }

    /// Text for one recipient on `channel`. `requested`: the request's locale; `own`: the
    /// recipient's stored locale. A failure is the delivery's (permanent) failure.
    pub fn render(
        &mut self,
        channel: Channel,
        requested: Option<&Locale>,
        own: Option<&str>,
    ) -> Result<Arc<RenderedContent>, Failure> {
        let own = own.and_then(|l| Locale::parse(l).ok());
        let mut locales: Vec<&str> = Vec::new();
        for locale in [requested, own.as_ref(), self.fallback_locale.as_ref()]
            .into_iter()
            .flatten()
        {
            for tag in locale.lookup_chain() {
                if !locales.contains(&tag) {
                    locales.push(tag);
                }
            }
        }
        let Some(index) = self.select(channel, &locales) else {
            return Err(Failure::permanent(
                "no_template",
                format!(
                    "no template for the {channel} channel in {} (nor for any channel)",
                    locales.join(", ")
                ),
            ));
        };
        let id = self.rows[index].row.id;
        if let Some(done) = self.rendered.get(&id) {
            return done.clone();
        }
        let result = self.render_row(index).map(Arc::new);
        self.rendered.insert(id, result.clone());
        result
    }

    fn select(&self, channel: Channel, locales: &[&str]) -> Option<usize> {
        locales.iter().find_map(|locale| {
            let in_locale = |c: &Choice| c.row.locale.eq_ignore_ascii_case(locale);
            self.rows
                .iter()
                .position(|c| c.channel == Some(channel) && in_locale(c))
                .or_else(|| {
                    self.rows
                        .iter()
                        .position(|c| c.channel.is_none() && in_locale(c))
                })
        })
    }

    fn render_row(&mut self, index: usize) -> Result<RenderedContent, Failure> {
        let choice = &self.rows[index];
        let row = choice.row.clone();
        let label = format!(
            "{}/{}",
            row.locale,
            choice.channel.map_or("any channel", Channel::as_str)
        );
        // The `.html` name turns on minijinja's HTML escaping for that part only.
        let subject = row
            .subject
            .map(|source| self.render_part(&row.id, "subject", source, &label))
            .transpose()?;
        let text = self.render_part(&row.id, "body", row.body, &label)?;
        let html = row
            .html
            .map(|source| self.render_part(&row.id, "html.html", source, &label))
            .transpose()?;
        Ok(RenderedContent {
            subject: subject.map(|s| s.trim().to_owned()),
            text,
            html,
        })
    }

    fn render_part(
        &mut self,
        id: &Uuid,
        part: &str,
        source: String,
        label: &str,
    ) -> Result<String, Failure> {
        let name = format!("{id}.{part}");
        let failed = |error: minijinja::Error| {
            let part = part.trim_end_matches(".html");
            Failure::permanent(
                "template_error",
                format!("template {label}, {part}: {error}"),
            )
        };
        self.env
            .add_template_owned(name.clone(), source)
            .map_err(failed)?;
        self.env
            .get_template(&name)
            .and_then(|template| template.render(&self.data))
            .map_err(failed)
    }

    /// The subscription has no template at all (R13: the message fails with `no_template`).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(channel: Option<Channel>, locale: &str, subject: Option<&str>, body: &str) -> Template {
        Template {
            id: Uuid::now_v7(),
            tenant_id: Uuid::nil(),
            subscription_id: Uuid::nil(),
            channel,
            locale: locale.to_owned(),
            subject: subject.map(str::to_owned),
            body: body.to_owned(),
            html: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    fn data(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn locale(s: &str) -> Locale {
        Locale::parse(s).unwrap()
    }

    #[test]
    fn the_requested_locale_wins_then_the_recipients_then_the_fallback() {
        let rows = vec![
            row(None, "en", Some("Order {{ order }}"), "Shipped {{ order }}"),
            row(None, "de", None, "Versandt {{ order }}"),
            row(None, "fr", None, "Expédiée {{ order }}"),
        ];
        let mut t = Templates::new(rows, "en", &data(json!({"order": 7})));
        let text = |r: Result<Arc<RenderedContent>, Failure>| r.unwrap().text.clone();
        assert_eq!(
            text(t.render(Channel::Email, Some(&locale("fr")), Some("de"))),
            "Expédiée 7"
        );
        assert_eq!(
            text(t.render(Channel::Email, None, Some("de-CH"))),
            "Versandt 7"
        );
        assert_eq!(
            text(t.render(Channel::Email, Some(&locale("it")), Some("ja"))),
            "Shipped 7"
        );
        let english = t.render(Channel::Sms, None, None).unwrap();
        assert_eq!(english.subject.as_deref(), Some("Order 7"));
    }

    #[test]
    fn a_channel_specific_template_comes_before_the_one_for_any_channel() {
        let rows = vec![
            row(None, "en", None, "generic"),
            row(Some(Channel::Sms), "en", None, "short"),
        ];
        let mut t = Templates::new(rows, "en", &Map::new());
        assert_eq!(t.render(Channel::Sms, None, None).unwrap().text, "short");
        assert_eq!(
            t.render(Channel::Email, None, None).unwrap().text,
            "generic"
        );
    }

    #[test]
    fn a_broken_or_unmatched_template_fails_only_whoever_gets_it() {
        let rows = vec![
            row(Some(Channel::Email), "en", None, "{% if %}"),
            row(Some(Channel::Sms), "en", None, "Hi {{ missing }}"),
            row(Some(Channel::Telegram), "en", None, "fine"),
        ];
        let mut t = Templates::new(rows, "en", &Map::new());
        let broken = t.render(Channel::Email, None, None).unwrap_err();
        assert_eq!(broken.code, "template_error");
        assert!(broken.message.contains("en/email"), "{}", broken.message);
        let missing = t.render(Channel::Sms, None, None).unwrap_err();
        assert_eq!(missing.code, "template_error");
        assert!(missing.message.contains("missing"), "{}", missing.message);
        assert_eq!(
            t.render(Channel::Telegram, None, None).unwrap().text,
            "fine"
        );
        let none = t.render(Channel::Discord, None, None).unwrap_err();
        assert_eq!(none.code, "no_template");
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let mut with_html = row(None, "en", None, "{{ name }}");
        with_html.html = Some("<p>{{ name }}</p>".into());
        let mut t = Templates::new(vec![with_html], "en", &data(json!({"name": "<Ann & Bob>"})));
        let content = t.render(Channel::Email, None, None).unwrap();
        assert_eq!(content.text, "<Ann & Bob>");
        assert_eq!(
            content.html.as_deref(),
            Some("<p>&lt;Ann &amp; Bob&gt;</p>")
        );
    }

    #[test]
    fn each_template_is_rendered_once_per_message() {
        let mut t = Templates::new(vec![row(None, "en", None, "x")], "en", &Map::new());
        let first = t.render(Channel::Email, None, None).unwrap();
        let second = t.render(Channel::Sms, None, Some("en-GB")).unwrap();
        assert!(Arc::ptr_eq(&first, &second));
    }
}
