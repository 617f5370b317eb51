-- Support tickets (R53): a person writes `/support <text>` to a chat bot; the router opens a
-- ticket in the tenant their chat is linked in and tells the tenant's staff through the
-- subscription the tenant chose; staff answer through the API, and the answer goes back to
-- the chat.

-- The subscription that tells staff about new tickets. NULL: tickets are only stored.
ALTER TABLE tenants ADD COLUMN support_subscription_id uuid
    REFERENCES subscriptions (id) ON DELETE SET NULL;

CREATE TABLE support_tickets (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    -- The bot's id for the request: a redelivered request opens no second ticket.
    request_id      uuid NOT NULL UNIQUE,
    user_id         uuid REFERENCES users (id) ON DELETE SET NULL,
    address_id      uuid REFERENCES addresses (id) ON DELETE SET NULL,
    -- The chat itself, kept when the address is removed: replies still need somewhere to go.
    channel         herald_channel NOT NULL,
    chat_kind       herald_address_kind NOT NULL,
    chat            text NOT NULL,
    display_name    text,
    body            text NOT NULL CHECK (length(body) BETWEEN 1 AND 4000),
    state           text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'answered', 'closed')),
    -- The message that told the staff (NULL when the tenant chose no subscription).
    message_id      uuid REFERENCES messages (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    closed_by       text,
    CHECK (chat_kind = channel OR starts_with(chat_kind, channel || '_'))
);
CREATE INDEX support_tickets_by_tenant ON support_tickets (tenant_id, id);

CREATE TABLE support_replies (
    id          uuid PRIMARY KEY,
    ticket_id   uuid NOT NULL REFERENCES support_tickets (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    body        text NOT NULL CHECK (length(body) BETWEEN 1 AND 4000),
    author      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX support_replies_by_ticket ON support_replies (ticket_id, id);

-- Who redeemed a link code (`<kind>:<value>` of the chat). A contact-link event delivered
-- twice (a router that died between its commit and its ack) finds its own redemption and
-- answers "linked" again, instead of "that code was used".
ALTER TABLE link_codes ADD COLUMN used_by text;
