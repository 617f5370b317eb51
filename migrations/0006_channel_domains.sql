-- One SQL type per closed list that grows with the channels (issue #12).
--
-- Before this, seven columns each repeated the channel list in a CHECK of their own, and
-- adding a channel meant finding all of them. Now every channel column is of the domain
-- `herald_channel`, and address kinds of `herald_address_kind`; each lists its words once.
-- Domains over text rather than PostgreSQL enums: values stay text on the wire (the Rust
-- enums map to text, `messaging_core::text_enum`), and a domain's list changes in a
-- transaction, which `ALTER TYPE ... ADD VALUE` cannot be used in.
--
-- Adding a channel is a migration that replaces the two constraints below with longer lists
-- (docs/adding-a-channel.md). `herald-storage`'s test `sql_lists_match_the_rust_enums`
-- fails while the lists here and `Channel::ALL` / `AddressKind::ALL` differ.
--
-- The other closed lists (states, statuses, roles) keep their CHECK constraints: they change
-- with Herald's own design, not with configuration, and the same test compares them too.

CREATE DOMAIN herald_channel AS text
    CONSTRAINT herald_channel_known
    CHECK (VALUE IN ('telegram', 'discord', 'xmpp', 'email', 'sms'));

CREATE DOMAIN herald_address_kind AS text
    CONSTRAINT herald_address_kind_known
    CHECK (VALUE IN ('telegram', 'discord', 'xmpp', 'xmpp_room', 'email', 'sms'));

ALTER TABLE users DROP CONSTRAINT users_preferred_channel_check,
    ALTER COLUMN preferred_channel TYPE herald_channel;
ALTER TABLE addresses DROP CONSTRAINT addresses_channel_check,
    DROP CONSTRAINT addresses_kind_check,
    ALTER COLUMN channel TYPE herald_channel,
    ALTER COLUMN kind TYPE herald_address_kind,
    -- A kind is named after its channel (`xmpp`, `xmpp_room`), so this needs no list of its
    -- own; `AddressKind`'s tests hold the Rust side to the same rule.
    ADD CONSTRAINT addresses_kind_fits_channel
        CHECK (kind = channel OR starts_with(kind, channel || '_'));
ALTER TABLE registrations DROP CONSTRAINT registrations_channel_check,
    ALTER COLUMN channel TYPE herald_channel;
ALTER TABLE templates DROP CONSTRAINT templates_channel_check,
    ALTER COLUMN channel TYPE herald_channel;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_channel_check,
    ALTER COLUMN channel TYPE herald_channel;
ALTER TABLE link_codes DROP CONSTRAINT link_codes_channel_check,
    ALTER COLUMN channel TYPE herald_channel;
