-- Proven addresses only (issue #17, part 1): Herald sends nothing but one verification
-- message to an address until someone proved it is theirs.
--
-- How an address was proven, and by whom: `code` (the person confirmed a code or link sent
-- to it), `link` (a chat bot captured it when the person wrote, R5), `import` (a tenant admin
-- vouched for it, named in `verified_by`), `tenant` (a WebSocket key in the tenant's own
-- client namespace), `migration` (on the books before this migration, see below).
ALTER TABLE addresses
    ADD COLUMN verified_at  timestamptz,
    ADD COLUMN verified_how text CHECK (verified_how IN ('code', 'link', 'import', 'tenant', 'migration')),
    ADD COLUMN verified_by  text;

-- Registrations used to name any channel and address, with or without an address row; the
-- fan-out now reads only registrations whose address row is proven and active. Addresses
-- and registrations that exist already were accepted under the old rules by the tenant's own
-- admins: they keep working, marked `migration`, so an upgrade does not silence every
-- subscriber. `GET /users/{id}` shows them; an operator who wants them proven again sets
-- `verified = false` on those rows.
INSERT INTO addresses (id, tenant_id, user_id, channel, kind, value)
SELECT DISTINCT ON (r.user_id, r.channel, r.address)
       gen_random_uuid(), r.tenant_id, r.user_id, r.channel, r.channel, r.address
FROM registrations r
WHERE NOT EXISTS (SELECT 1 FROM addresses a
                  WHERE a.user_id = r.user_id AND a.channel = r.channel AND a.value = r.address)
ON CONFLICT DO NOTHING;
UPDATE addresses SET verified = true, verified_at = now(), verified_how = 'migration',
                     verified_by = 'migration 0012'
WHERE NOT verified;
UPDATE addresses SET verified_how = 'link', verified_at = coalesce(verified_at, updated_at)
WHERE verified AND verified_how IS NULL;

-- The code that proves one address: one live code per address. Only a keyed hash is stored
-- (HMAC-SHA-256 with the API's `api.code_secret`), so a copy of the database alone does not
-- give away the six-digit codes. `link` codes are the long tokens mailed as a link; they are
-- looked up by hash, without a login.
CREATE TABLE address_verifications (
    address_id  uuid PRIMARY KEY REFERENCES addresses (id) ON DELETE CASCADE,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    code_hash   bytea NOT NULL,
    link        boolean NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX address_verifications_by_link ON address_verifications (code_hash) WHERE link;

-- Every verification message sent: the caps per address per day and per tenant per hour
-- count these rows. Kept for two days.
CREATE TABLE verification_sends (
    id          bigserial PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    address_id  uuid REFERENCES addresses (id) ON DELETE SET NULL,
    channel     herald_channel NOT NULL,
    value       text NOT NULL,
    actor       text NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX verification_sends_by_tenant ON verification_sends (tenant_id, sent_at);
-- By channel and value, not address row: deleting the address and adding it again must not
-- reset its count.
CREATE INDEX verification_sends_by_value ON verification_sends (channel, value, sent_at);

-- A verification message is a message of its own, with one delivery, tracked like any other.
ALTER TABLE messages DROP CONSTRAINT messages_source_check,
    ADD CONSTRAINT messages_source_check
        CHECK (source IN ('api', 'amqp', 'legacy', 'schedule', 'event', 'verification'));

-- The API publishes a verification message's send job itself, through its outbox: the AMQP
-- `type` of the row's body is no longer always a notify request.
ALTER TABLE outbox ADD COLUMN kind text NOT NULL DEFAULT 'herald.notify.v1';

-- SMS only to these country calling codes (`41`, `49`, `1`), per tenant; NULL: the API's
-- `api.sms_country_codes`. Toll fraud (SMS pumping) sends to expensive ranges abroad.
ALTER TABLE tenants ADD COLUMN sms_country_codes text[];
