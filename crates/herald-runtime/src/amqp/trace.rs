//! W3C trace context carried in the `traceparent` header.
//!
//! The consumer runner puts the incoming message's context in a task-local while the handler
//! runs; anything the handler publishes carries a child of it. One notification therefore
//! keeps one trace id from the producer through the router to the sender, and logs can be
//! joined on it, with no tracing backend required.

use std::fmt;
use std::future::Future;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

impl TraceContext {
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        TraceContext {
            trace_id: rng.random::<u128>().max(1),
            span_id: rng.random::<u64>().max(1),
        }
    }

    /// Same trace, new span.
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id,
            span_id: rand::rng().random::<u64>().max(1),
        }
    }

    /// Parses `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|id| *id != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|id| *id != 0)?;
        Some(TraceContext { trace_id, span_id })
    }

    pub fn traceparent(&self) -> String {
        format!("00-{:032x}-{:016x}-01", self.trace_id, self.span_id)
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The context of the message being handled on this task, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|c| *c).ok()
    }

    /// A context for a message about to be published: a child of the current one, or a new
    /// trace when nothing is being handled.
    pub fn for_outgoing() -> Self {
        Self::current().map_or_else(Self::new_root, |c| c.child())
    }

    /// Runs `future` with this context as the current one.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips() {
        let ctx = TraceContext::new_root();
        assert_eq!(TraceContext::parse(&ctx.traceparent()), Some(ctx));
        assert_eq!(
            TraceContext::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                .unwrap()
                .span_id,
            0xb7ad6b7169203331
        );
        assert!(TraceContext::parse("garbage").is_none());
        assert!(
            TraceContext::parse("00-00000000000000000000000000000000-b7ad6b7169203331-01")
                .is_none()
        );
    }

    #[tokio::test]
    async fn outgoing_messages_continue_the_current_trace() {
        let parent = TraceContext::new_root();
        let child = parent.scope(async { TraceContext::for_outgoing() }).await;
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert!(TraceContext::current().is_none());
    }
}
