//! One help-desk room as the bot sees it (R32-R36): who is in, in order of arrival, and the
//! state that follows. No I/O here: the pool ([`crate::pool`]) feeds it presences and acts on
//! what it answers.
//!
//! ```text
//! free ──1st in──► staff_waiting ──2nd in──► chatting ──staff leaves──► staff_left ──last leaves──► closed
//!  (reserved by the API)   │                     └──client leaves──► client_left ──last leaves──► closed
//!                          └──staff leaves (nobody else came)──────────────────────────────────► closed
//! staff_left / client_left ──someone comes (back) in──► chatting
//! a third person ──► refused (kicked), the state stays
//! ```

use messaging_core::RoomState;

/// What the pool must do after a presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Report this state, caused by this occupant.
    State(RoomState, String),
    /// A third person: kick them and report the refusal.
    Refuse(String),
    /// The last person left: report `closed`, leave and destroy the room.
    Close(String),
}

/// A room of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    pub password: String,
    pub state: RoomState,
    /// Nicknames of the people in (never the bot), in order of arrival.
    occupants: Vec<String>,
    /// The staff member's nickname: the first person in.
    staff: Option<String>,
}

/// Staff, client: a room holds two people besides the bot.
pub const PEOPLE: usize = 2;

impl Room {
    /// A new room of the pool.
    pub fn free(password: String) -> Room {
        Room {
            password,
            state: RoomState::Free,
            occupants: Vec::new(),
            staff: None,
        }
    }

    /// A room from the roster, before the bot has seen who is in.
    pub fn known(password: String, state: RoomState, staff: Option<String>) -> Room {
        Room {
            password,
            state,
            occupants: Vec::new(),
            staff,
        }
    }

    /// Nobody has come in yet: the room counts as free for the pool.
    pub fn is_free(&self) -> bool {
        self.state == RoomState::Free
    }

    pub fn occupants(&self) -> &[String] {
        &self.occupants
    }

    /// Someone came in.
    pub fn joined(&mut self, nick: &str) -> Option<Effect> {
        if self.occupants.iter().any(|n| n == nick) {
            return None; // a presence update of someone already in
        }
        if self.occupants.len() >= PEOPLE {
            return Some(Effect::Refuse(nick.to_owned()));
        }
        self.occupants.push(nick.to_owned());
        let state = match self.occupants.len() {
            1 => {
                self.staff = Some(nick.to_owned());
                RoomState::StaffWaiting
            }
            _ => {
                // Whoever comes to a client left alone takes the staff member's part.
                if self.state == RoomState::StaffLeft {
                    self.staff = Some(nick.to_owned());
                }
                RoomState::Chatting
            }
        };
        self.state = state;
        Some(Effect::State(state, nick.to_owned()))
    }

    /// Someone left (or was kicked). A refused third person was never counted in.
    pub fn left(&mut self, nick: &str) -> Option<Effect> {
        let at = self.occupants.iter().position(|n| n == nick)?;
        self.occupants.remove(at);
        if self.occupants.is_empty() {
            self.state = RoomState::Closed;
            return Some(Effect::Close(nick.to_owned()));
        }
        let state = if self.staff.as_deref() == Some(nick) {
            RoomState::StaffLeft
        } else {
            RoomState::ClientLeft
        };
        self.state = state;
        Some(Effect::State(state, nick.to_owned()))
    }

    /// After rejoining a room from the roster: the people found in it (in the order the
    /// server listed them) against the state the database had, and what to report.
    pub fn reconcile(&mut self, present: Vec<String>) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut present = present;
        while present.len() > PEOPLE {
            if let Some(extra) = present.pop() {
                effects.push(Effect::Refuse(extra));
            }
        }
        let before = self.state;
        self.occupants = present;
        let who = |room: &Room| room.occupants.first().cloned().unwrap_or_default();
        let state = match (self.occupants.len(), before) {
            // Nobody: a room people had been in was left while the bot was away.
            (0, RoomState::Free | RoomState::Reserved) => before,
            (0, _) => {
                self.state = RoomState::Closed;
                effects.push(Effect::Close(String::new()));
                return effects;
            }
            (1, RoomState::Free | RoomState::Reserved) => {
                self.staff = self.occupants.first().cloned();
                RoomState::StaffWaiting
            }
            (1, RoomState::StaffWaiting | RoomState::StaffLeft | RoomState::ClientLeft) => before,
            (1, _) => {
                // Of two, one left: the staff member if the one still in is not them.
                if self.staff.is_some() && self.staff.as_ref() == self.occupants.first() {
                    RoomState::ClientLeft
                } else {
                    RoomState::StaffLeft
                }
            }
            (_, _) => RoomState::Chatting,
        };
        self.state = state;
        if state != before {
            effects.push(Effect::State(state, who(self)));
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(effect: Option<Effect>) -> RoomState {
        match effect {
            Some(Effect::State(state, _)) => state,
            Some(Effect::Close(_)) => RoomState::Closed,
            other => panic!("a state expected, got {other:?}"),
        }
    }

    #[test]
    fn staff_then_client_then_both_leave() {
        let mut room = Room::free("pw".into());
        assert!(room.is_free());
        assert_eq!(state(room.joined("staff")), RoomState::StaffWaiting);
        assert!(!room.is_free());
        assert_eq!(
            room.joined("staff"),
            None,
            "a presence update changes nothing"
        );
        assert_eq!(state(room.joined("client")), RoomState::Chatting);
        assert_eq!(state(room.left("client")), RoomState::ClientLeft);
        assert_eq!(
            room.left("staff"),
            Some(Effect::Close("staff".into())),
            "the last one out closes it"
        );
    }

    #[test]
    fn the_staff_member_leaving_first_is_staff_left() {
        let mut room = Room::free("pw".into());
        room.joined("ann");
        room.joined("bob");
        assert_eq!(state(room.left("ann")), RoomState::StaffLeft);
        assert_eq!(state(room.joined("ann")), RoomState::Chatting, "back in");
        assert_eq!(state(room.left("bob")), RoomState::ClientLeft);
    }

    #[test]
    fn staff_alone_leaving_closes_the_room() {
        let mut room = Room::free("pw".into());
        room.joined("ann");
        assert!(matches!(room.left("ann"), Some(Effect::Close(_))));
    }

    #[test]
    fn a_third_person_is_refused_and_counts_nowhere() {
        let mut room = Room::free("pw".into());
        room.joined("ann");
        room.joined("bob");
        assert_eq!(room.joined("eve"), Some(Effect::Refuse("eve".into())));
        assert_eq!(room.state, RoomState::Chatting);
        assert_eq!(
            room.left("eve"),
            None,
            "the kick's presence changes nothing"
        );
        assert_eq!(room.occupants(), ["ann", "bob"]);
    }

    #[test]
    fn a_restart_finds_what_happened_while_away() {
        // Both still in: nothing to report.
        let mut room = Room::known("pw".into(), RoomState::Chatting, Some("ann".into()));
        assert!(room.reconcile(vec!["ann".into(), "bob".into()]).is_empty());
        // The client left while the bot was away.
        let mut room = Room::known("pw".into(), RoomState::Chatting, Some("ann".into()));
        assert_eq!(
            room.reconcile(vec!["ann".into()]),
            [Effect::State(RoomState::ClientLeft, "ann".into())]
        );
        // The staff member left.
        let mut room = Room::known("pw".into(), RoomState::Chatting, Some("ann".into()));
        assert_eq!(
            room.reconcile(vec!["bob".into()]),
            [Effect::State(RoomState::StaffLeft, "bob".into())]
        );
        // Everyone left.
        let mut room = Room::known("pw".into(), RoomState::StaffWaiting, Some("ann".into()));
        assert_eq!(room.reconcile(vec![]), [Effect::Close(String::new())]);
        // A free room is still free.
        let mut room = Room::known("pw".into(), RoomState::Free, None);
        assert!(room.reconcile(vec![]).is_empty());
        // Staff came into a reserved room while the bot was away.
        let mut room = Room::known("pw".into(), RoomState::Reserved, None);
        assert_eq!(
            room.reconcile(vec!["ann".into()]),
            [Effect::State(RoomState::StaffWaiting, "ann".into())]
        );
        assert_eq!(state(room.joined("bob")), RoomState::Chatting);
        assert_eq!(state(room.left("bob")), RoomState::ClientLeft);
        // Three people: the last one is refused.
        let mut room = Room::known("pw".into(), RoomState::Chatting, Some("ann".into()));
        assert_eq!(
            room.reconcile(vec!["ann".into(), "bob".into(), "eve".into()]),
            [Effect::Refuse("eve".into())]
        );
    }
}
