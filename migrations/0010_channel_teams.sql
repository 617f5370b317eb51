-- Microsoft Teams through the Bot Framework (R38, issue #15): a channel and its address kind.
-- A Teams address is the Bot Connector's service URL and the conversation id, as the bot
-- captured them from an activity (`messaging_core::values::TeamsChat`).

ALTER DOMAIN herald_channel DROP CONSTRAINT herald_channel_known;
ALTER DOMAIN herald_channel ADD CONSTRAINT herald_channel_known
    CHECK (VALUE IN ('telegram', 'discord', 'xmpp', 'email', 'sms', 'teams'));

ALTER DOMAIN herald_address_kind DROP CONSTRAINT herald_address_kind_known;
ALTER DOMAIN herald_address_kind ADD CONSTRAINT herald_address_kind_known
    CHECK (VALUE IN ('telegram', 'discord', 'xmpp', 'xmpp_room', 'email', 'sms', 'teams'));
