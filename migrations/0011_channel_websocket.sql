-- WebSocket clients of the tenant's own (R39, issue #15): a channel and its address kind. A
-- WebSocket address is a namespace and an id (`support-bot/42`,
-- `messaging_core::values::WsKey`), which the tenant's clients register for.

ALTER DOMAIN herald_channel DROP CONSTRAINT herald_channel_known;
ALTER DOMAIN herald_channel ADD CONSTRAINT herald_channel_known
    CHECK (VALUE IN ('telegram', 'discord', 'xmpp', 'email', 'sms', 'teams', 'websocket'));

ALTER DOMAIN herald_address_kind DROP CONSTRAINT herald_address_kind_known;
ALTER DOMAIN herald_address_kind ADD CONSTRAINT herald_address_kind_known
    CHECK (VALUE IN ('telegram', 'discord', 'xmpp', 'xmpp_room', 'email', 'sms', 'teams', 'websocket'));
