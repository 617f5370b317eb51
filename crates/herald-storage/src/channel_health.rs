//! What the router's send-queue watchdog last saw of each channel's senders
//! (`channel_health`, migration 0017), for the API to explain a pending delivery (R4 c):
//! while a channel's senders all wait for their provider (their breakers are open), or no
//! sender runs at all, a producer asking about a pending delivery learns so, with class
//! `unhealthy`, instead of seeing "pending" and nothing else.

use chrono::{DateTime, Utc};
use messaging_core::Channel;
use sqlx::PgExecutor;

use crate::error::StoreError;

/// One look at one channel's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLook {
    pub channel: Channel,
    pub senders: u32,
    pub paused: u32,
    pub waiting: u32,
}

/// Records every channel's look, in one statement.
pub async fn record(db: impl PgExecutor<'_>, looks: &[ChannelLook]) -> Result<(), StoreError> {
    let channels: Vec<Channel> = looks.iter().map(|l| l.channel).collect();
    let count = |f: fn(&ChannelLook) -> u32| -> Vec<i32> {
        looks
            .iter()
            .map(|l| i32::try_from(f(l)).unwrap_or(i32::MAX))
            .collect()
    };
    sqlx::query(
        "INSERT INTO channel_health (channel, senders, paused, waiting, checked_at)
         SELECT channel, senders, paused, waiting, now()
         FROM UNNEST($1::text[], $2::int[], $3::int[], $4::int[])
              AS l(channel, senders, paused, waiting)
         ORDER BY channel
         ON CONFLICT (channel) DO UPDATE
            SET senders = EXCLUDED.senders, paused = EXCLUDED.paused,
                waiting = EXCLUDED.waiting, checked_at = EXCLUDED.checked_at",
    )
    .bind(channels)
    .bind(count(|l| l.senders))
    .bind(count(|l| l.paused))
    .bind(count(|l| l.waiting))
    .execute(db)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChannelHealth {
    pub channel: Channel,
    pub senders: i32,
    pub paused: i32,
    pub waiting: i32,
    pub checked_at: DateTime<Utc>,
}

/// Why a channel's pending deliveries are not moving, when they are not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// `provider_unavailable` or `no_sender_running`.
    pub code: &'static str,
    pub message: String,
}

impl ChannelHealth {
    /// `None` while some sender takes the channel's jobs.
    pub fn stalled(&self) -> Option<Stalled> {
        if self.senders > 0 {
            return None;
        }
        let channel = self.channel;
        Some(if self.paused > 0 {
            Stalled {
                code: "provider_unavailable",
                message: format!(
                    "the {channel} provider is failing; its sender holds the job and sends it when the provider recovers (as of {})",
                    self.checked_at.format("%Y-%m-%dT%H:%M:%SZ")
                ),
            }
        } else {
            Stalled {
                code: "no_sender_running",
                message: format!(
                    "no {channel} sender is running; the job waits in its queue (as of {})",
                    self.checked_at.format("%Y-%m-%dT%H:%M:%SZ")
                ),
            }
        })
    }
}

/// Every channel looked at within the last `fresh_secs` seconds (an older look says nothing
/// about now: no router has been watching).
pub async fn current(
    db: impl PgExecutor<'_>,
    fresh_secs: i64,
) -> Result<Vec<ChannelHealth>, StoreError> {
    Ok(sqlx::query_as::<_, ChannelHealth>(
        "SELECT channel, senders, paused, waiting, checked_at FROM channel_health
         WHERE checked_at > now() - make_interval(secs => $1)",
    )
    .bind(fresh_secs as f64)
    .fetch_all(db)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(senders: i32, paused: i32) -> ChannelHealth {
        ChannelHealth {
            channel: Channel::Sms,
            senders,
            paused,
            waiting: 10,
            checked_at: Utc::now(),
        }
    }

    #[test]
    fn a_channel_is_stalled_only_without_a_sender_taking_jobs() {
        assert_eq!(health(1, 1).stalled(), None);
        assert_eq!(health(0, 2).stalled().unwrap().code, "provider_unavailable");
        assert_eq!(health(0, 0).stalled().unwrap().code, "no_sender_running");
    }
}
