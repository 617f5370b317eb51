-- R53's "staff can answer in a help-desk room": a tenant admin reserves a room of the pool to
-- answer a support ticket. The XMPP bot posts the ticket into the room and relays what staff
-- write there; the router stores each as the ticket's reply and sends it to the person's chat.
-- The person stays on their own channel (Telegram, Discord, ...): a ticket's room is never
-- handed to a client.
ALTER TABLE help_desk_rooms ADD COLUMN ticket_id uuid REFERENCES support_tickets (id) ON DELETE SET NULL;
-- The rooms of a ticket (its current one, and the closed ones as history).
CREATE INDEX help_desk_rooms_by_ticket ON help_desk_rooms (ticket_id) WHERE ticket_id IS NOT NULL;

-- A reply said in a room comes from a bot event: a redelivered event is stored once.
ALTER TABLE support_replies ADD COLUMN event_id uuid UNIQUE;

-- The client route (R33) hands out the staff rooms without a ticket only.
DROP INDEX help_desk_rooms_waiting;
CREATE INDEX help_desk_rooms_waiting ON help_desk_rooms (tenant_id, staff_waiting_since, id)
    WHERE state = 'staff_waiting' AND client_ref IS NULL AND ticket_id IS NULL;
