-- A Teams conversation can be answered at a new service URL (R38): the router finds the
-- addresses that hold a conversation by its id, the part after the space, whatever URL they
-- were stored with (herald_storage::addresses::follow_moved_chat).
CREATE INDEX addresses_teams_conversation ON addresses (split_part(value, ' ', 2))
    WHERE kind = 'teams';

-- The rest of a chat's reference as the bot saw it (Teams: the conversation's Entra tenant,
-- the bot's and the person's ids, the person's object id, the conversation type), written
-- when the chat is linked and when it moves: what opening a new conversation with the
-- person would take, and whose chat it is. NULL for channels whose address says it all.
ALTER TABLE addresses ADD COLUMN chat_reference jsonb;
