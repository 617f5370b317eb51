-- Help-desk rooms (R31-R36): the XMPP bot keeps a pool of password-protected multi-user-chat
-- rooms; the web application asks the API for a free one for a staff member (R32), then for
-- the room whose staff member has waited longest for a client (R33). The bot never touches
-- the database: it reports each room's creation and every change of who is in it as a
-- `RoomEvent`, and the router stores it here (`herald_storage::rooms`).
--
-- A room belongs to the bot that made it, and to a tenant only from its reservation on: the
-- pool is shared by every tenant. Closed rooms stay as history (R36), with the time of every
-- change in `help_desk_room_changes`.

CREATE TABLE help_desk_rooms (
    id                  uuid PRIMARY KEY,
    -- The room's bare JID (`name@muc-service`); names are unique, the bot makes them so.
    room_jid            text NOT NULL UNIQUE,
    -- The bare JID of the bot that made it, owns it and rejoins it after a restart.
    bot_jid             text NOT NULL,
    -- Stored as it is, not hashed like API keys and link codes: Herald never checks it, it
    -- hands it out. The web application gives it to the staff member and the client, who
    -- type it into their XMPP client, and the bot needs it to rejoin its rooms after a
    -- restart. It opens one short-lived room, is random per room, and is no longer handed
    -- out once the room is closed (and the room no longer exists then).
    password            text NOT NULL CHECK (length(password) BETWEEN 1 AND 1024),
    state               text NOT NULL DEFAULT 'free' CHECK (state IN (
                            'free', 'reserved', 'staff_waiting', 'chatting', 'staff_left',
                            'client_left', 'closed')),
    -- NULL while the room is in the pool. A deleted tenant's rooms lose their tenant but stay:
    -- the bot still runs them and asks for them after a restart.
    tenant_id           uuid REFERENCES tenants (id) ON DELETE SET NULL,
    -- The web application's own ids for the staff member and the client (opaque to Herald).
    staff_ref           text CHECK (octet_length(staff_ref) BETWEEN 1 AND 255),
    client_ref          text CHECK (octet_length(client_ref) BETWEEN 1 AND 255),
    -- When the bot created it (the event's time).
    created_at          timestamptz NOT NULL,
    reserved_at         timestamptz,
    -- When the staff member came in: the FIFO key of R33 (the longest wait goes first).
    staff_waiting_since timestamptz,
    client_assigned_at  timestamptz,
    -- When `state` last changed: a bot event's time, or the reservation's.
    state_changed_at    timestamptz NOT NULL,
    -- The time of the latest bot event applied to `state`. The bot's events of one room may
    -- arrive out of order (retries, several router replicas); an older one is recorded but
    -- does not overwrite a newer one. Compared with the bot's own times only, not with the
    -- reservation's, which comes from another clock: a staff member who joins milliseconds
    -- after the reservation on a bot whose clock is behind must still count.
    last_event_at       timestamptz NOT NULL,
    closed_at           timestamptz,
    -- A reservation names its staff member, an assignment its client, and a client is only
    -- ever given a staff member's room. No check ties the tenant to the state: a deleted
    -- tenant's rooms keep their state.
    CONSTRAINT help_desk_rooms_reserved_for_staff CHECK ((reserved_at IS NULL) = (staff_ref IS NULL)),
    CONSTRAINT help_desk_rooms_free_is_unreserved CHECK (state <> 'free' OR reserved_at IS NULL),
    CONSTRAINT help_desk_rooms_reserved_has_time CHECK (state <> 'reserved' OR reserved_at IS NOT NULL),
    CONSTRAINT help_desk_rooms_assigned_to_client CHECK ((client_assigned_at IS NULL) = (client_ref IS NULL)),
    CONSTRAINT help_desk_rooms_client_after_staff CHECK (client_ref IS NULL OR staff_ref IS NOT NULL),
    CONSTRAINT help_desk_rooms_closed_has_time CHECK ((state = 'closed') = (closed_at IS NOT NULL))
);
-- The pool, oldest free room first (the staff route's pick).
CREATE INDEX help_desk_rooms_free ON help_desk_rooms (created_at, id) WHERE state = 'free';
-- R33: a tenant's staff members waiting without a client, longest wait first (the client
-- route's pick).
CREATE INDEX help_desk_rooms_waiting ON help_desk_rooms (tenant_id, staff_waiting_since, id)
    WHERE state = 'staff_waiting' AND client_ref IS NULL;
-- A tenant's rooms, paged by id (creation order).
CREATE INDEX help_desk_rooms_by_tenant ON help_desk_rooms (tenant_id, id);
-- A restarted bot's roster: its rooms that are not closed.
CREATE INDEX help_desk_rooms_open_by_bot ON help_desk_rooms (bot_jid) WHERE state <> 'closed';

-- Every change of a room with its time (R36): created, reserved, a client assigned, each
-- state the bot reported, and each person the bot refused.
CREATE TABLE help_desk_room_changes (
    id          uuid PRIMARY KEY,
    room_id     uuid NOT NULL REFERENCES help_desk_rooms (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN (
                    'created', 'reserved', 'client_assigned', 'state', 'refused')),
    -- The room's state this change is about: `free` when created, `reserved` when reserved,
    -- the bot's state for `state`; NULL for `client_assigned` and `refused`.
    state       text CHECK (state IN (
                    'free', 'reserved', 'staff_waiting', 'chatting', 'staff_left',
                    'client_left', 'closed')),
    -- The nickname of who came in, left or was refused, as the bot reported it.
    occupant    text,
    -- The bot's event this came from: a redelivered event is stored once. NULL for the API's
    -- changes (reserved, client assigned).
    event_id    uuid UNIQUE,
    -- Whether it changed the room's current state. `false`: a state the bot reported for a
    -- closed room, or one older than the room's latest (recorded, not applied).
    applied     boolean NOT NULL DEFAULT true,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT help_desk_room_changes_state_fits_kind
        CHECK ((kind IN ('created', 'reserved', 'state')) = (state IS NOT NULL))
);
CREATE INDEX help_desk_room_changes_by_room ON help_desk_room_changes (room_id, occurred_at, id);
