//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations as they are
//! registered (utoipa-axum), so a route cannot exist without being documented.
//!
//! Served at `/api/openapi.json` (and rendered at `/api/docs`); a copy is committed in
//! `docs/openapi.json` and a test fails when it is stale (`just openapi` rewrites it).

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi as _};

use crate::error::Problem;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Herald subscription API",
        description = "Tenants, subscriptions, registrations, people and their addresses, \
            templates, schedules, event bindings, triggers, direct messages, delivery records, \
            support tickets and help-desk rooms. \
            Errors are RFC 9457 problem documents (`application/problem+json`) naming the field \
            at fault. Authenticate with an API key (`X-Api-Key`) or a JWT bearer token; a \
            global admin picks the tenant with the `Herald-Tenant` header.",
        license(name = "Apache-2.0")
    ),
    components(schemas(Problem)),
    modifiers(&Security, &ProblemByDefault),
    security(("apiKey" = []), ("bearer" = [])),
    tags(
        (name = "subscriptions", description = "Topics people opt into (R11, R12)"),
        (name = "registrations", description = "A person subscribed on one channel address (R12)"),
        (name = "templates", description = "Subject and body per channel and locale (R13)"),
        (name = "triggers", description = "Schedules, event bindings and the trigger route (R14)"),
        (name = "messages", description = "Direct messages and their status (R1, R4)"),
        (name = "deliveries", description = "Delivery records per recipient and channel (R15)"),
        (name = "users", description = "People, their settings, addresses and link codes (R1-R6)"),
        (name = "support", description = "Support tickets from the chat bots, staff replies and who hears of new tickets (R53)"),
        (name = "help-desk", description = "XMPP help-desk rooms for staff and clients: a free room for a staff member, the longest-waiting staff member's room for a client, the rooms and their history (R31-R36)"),
        (name = "admin", description = "Tenants and API keys (R10, R19)"),
    )
)]
struct ApiDoc;

/// The whole document: the base above plus every registered route.
pub fn document(paths: OpenApi) -> OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(paths);
    let components = doc.components.get_or_insert_with(Default::default);
    for (name, schema) in crate::schema::components() {
        components.schemas.insert(name, schema);
    }
    // Give the default error response to operations added by the merge as well.
    ProblemByDefault.modify(&mut doc);
    doc
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "An API key (`hk_...`), shown once when created",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 or RS256 token with claims `role`, `tenant` and (for users) `sub`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every operation can fail with a problem document (401, 403, 404, 422, 429, 503, ...):
/// say so once here instead of on each handler.
struct ProblemByDefault;

impl Modify for ProblemByDefault {
    fn modify(&self, openapi: &mut OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                operation
                    .responses
                    .responses
                    .entry("default".to_owned())
                    .or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description("A problem document saying what is wrong")
                                .content(
                                    "application/problem+json",
                                    ContentBuilder::new()
                                        .schema(Some(utoipa::openapi::Ref::from_schema_name(
                                            "Problem",
                                        )))
                                        .build(),
                                )
                                .build(),
                        )
                    });
            }
        }
    }
}
