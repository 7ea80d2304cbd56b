//! A job's progress stream, the state machine behind `GET /v1/jobs/{id}/events`.
//!
//! The job's current state comes first. Live events follow, and any the client has already seen
//! (`Last-Event-ID`) are skipped. The stream ends after the final event (`done` or `failed`). A
//! held stream (`?hold=true`) sends the final event and then stays open, keeping its watch guard,
//! until the client leaves. No stream outlives its maximum lifetime: the browser's `EventSource`
//! reconnects with `Last-Event-ID` and carries on from there.

use std::time::Duration;

use backless_common::events::JobEvent;
use futures::StreamExt;
use futures::stream::{self, BoxStream};

use super::views::JobEventView;

/// What a progress stream starts from.
pub struct Progress<G> {
    /// The job's state when the stream opened, as an event.
    pub first: JobEvent,
    /// Everything the job reports from now on (empty for a finished job).
    pub live: BoxStream<'static, JobEvent>,
    /// The `Last-Event-ID` the client sent (0: none).
    pub last_seen: u64,
    /// Stay open after the final event until the client leaves.
    pub hold: bool,
    /// Held for as long as the stream lives (the job's watch registration).
    pub guard: G,
    /// When the stream ends at the latest.
    pub max_lifetime: Duration,
}

struct State<G> {
    first: Option<JobEvent>,
    live: BoxStream<'static, JobEvent>,
    last: u64,
    hold: bool,
    ended: bool,
    _guard: G,
}

impl<G: Send + 'static> Progress<G> {
    /// The events to send, in order.
    pub fn into_stream(self) -> BoxStream<'static, JobEventView> {
        let state = State {
            first: Some(self.first),
            live: self.live,
            last: self.last_seen,
            hold: self.hold,
            ended: false,
            _guard: self.guard,
        };
        stream::unfold(Some(state), |state| async move { next(state?).await })
            .take_until(tokio::time::sleep(self.max_lifetime))
            .boxed()
    }
}

/// The next event to send and the state after it; `None` ends the stream.
async fn next<G>(mut st: State<G>) -> Option<(JobEventView, Option<State<G>>)> {
    if st.ended {
        return after_end(st).await;
    }
    loop {
        let ev = match st.first.take() {
            // Already seen the end: nothing more will come.
            Some(e) if e.stage.is_final() && e.seq <= st.last => return after_end(st).await,
            Some(e) => e,
            None => match st.live.next().await {
                Some(e) => e,
                None => return after_end(st).await,
            },
        };
        if ev.seq <= st.last {
            continue;
        }
        st.last = ev.seq;
        let then = match (ev.stage.is_final(), st.hold) {
            (false, _) => Some(st),
            (true, false) => None,
            (true, true) => {
                // Send the final event now; the next poll parks in `after_end`.
                st.ended = true;
                Some(st)
            }
        };
        return Some((JobEventView::from(ev), then));
    }
}

/// After the final event: end, or (held) stay open with the guard until the client leaves and
/// the stream is dropped. A parked stream lets its live events go: it will read no more.
async fn after_end<G>(mut st: State<G>) -> Option<(JobEventView, Option<State<G>>)> {
    if st.hold {
        st.live = stream::empty().boxed();
        std::future::pending::<()>().await;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use backless_common::events::Stage;
    use futures::FutureExt;

    use super::*;

    fn event(stage: Stage) -> JobEvent {
        JobEvent {
            seq: stage.seq(),
            stage,
            elapsed_ms: 0,
            message: None,
            error_code: None,
        }
    }

    fn progress(
        first: Stage,
        live: &[Stage],
        last_seen: u64,
        hold: bool,
    ) -> (BoxStream<'static, JobEventView>, Arc<()>) {
        let guard = Arc::new(());
        let live: Vec<JobEvent> = live.iter().map(|&s| event(s)).collect();
        let stream = Progress {
            first: event(first),
            // A live bus never ends by itself.
            live: stream::iter(live).chain(stream::pending()).boxed(),
            last_seen,
            hold,
            guard: Arc::clone(&guard),
            max_lifetime: Duration::from_secs(3600),
        }
        .into_stream();
        (stream, guard)
    }

    /// The stages sent until the stream ends or would wait.
    fn ready(stream: &mut BoxStream<'static, JobEventView>) -> (Vec<Stage>, bool) {
        let mut seen = Vec::new();
        loop {
            match stream.next().now_or_never() {
                Some(Some(e)) => seen.push(e.stage),
                Some(None) => return (seen, true),
                None => return (seen, false),
            }
        }
    }

    #[tokio::test]
    async fn the_state_first_then_live_events_in_order_until_the_end() {
        let live = [
            Stage::Received,
            Stage::Segmenting,
            Stage::Compositing,
            Stage::Stored,
            Stage::Done,
            // Nothing after the end is sent.
            Stage::Failed,
        ];
        let (mut s, guard) = progress(Stage::Queued, &live, 0, false);
        let (seen, ended) = ready(&mut s);
        assert_eq!(seen, [&[Stage::Queued], &live[..5]].concat());
        assert!(ended);
        drop(s);
        assert_eq!(
            Arc::strong_count(&guard),
            1,
            "an ended stream lets its guard go"
        );
    }

    #[tokio::test]
    async fn what_the_client_has_seen_is_skipped_and_repeats_are_dropped() {
        // Reconnecting after `segmenting` (event id 10): a repeat of it, and of earlier stages
        // arriving late from another process, is not sent again.
        let live = [
            Stage::Segmenting,
            Stage::Received,
            Stage::Compositing,
            Stage::Compositing,
            Stage::Done,
        ];
        let (mut s, _) = progress(Stage::Received, &live, Stage::Segmenting.seq(), false);
        let (seen, ended) = ready(&mut s);
        assert_eq!(seen, [Stage::Compositing, Stage::Done]);
        assert!(ended);
    }

    #[tokio::test]
    async fn a_finished_job_already_seen_sends_nothing() {
        let (mut s, _) = progress(Stage::Done, &[], Stage::Done.seq(), false);
        assert_eq!(ready(&mut s), (vec![], true));
        // Held: nothing either, and the stream stays open.
        let (mut s, guard) = progress(Stage::Done, &[], Stage::Done.seq(), true);
        assert_eq!(ready(&mut s), (vec![], false));
        assert_eq!(Arc::strong_count(&guard), 2);
    }

    #[tokio::test]
    async fn a_held_stream_sends_the_end_then_stays_open_with_its_guard() {
        let (mut s, guard) = progress(Stage::Stored, &[Stage::Done], 0, true);
        assert_eq!(ready(&mut s), (vec![Stage::Stored, Stage::Done], false));
        assert_eq!(ready(&mut s), (vec![], false), "still open");
        assert_eq!(Arc::strong_count(&guard), 2, "the guard is held");
        drop(s);
        assert_eq!(
            Arc::strong_count(&guard),
            1,
            "the client left: the guard goes"
        );
    }

    #[tokio::test]
    async fn no_stream_outlives_its_lifetime() {
        let guard = Arc::new(());
        let mut s = Progress {
            first: event(Stage::Queued),
            live: stream::pending().boxed(),
            last_seen: 0,
            hold: true,
            guard: Arc::clone(&guard),
            max_lifetime: Duration::from_millis(20),
        }
        .into_stream();
        assert_eq!(s.next().await.map(|e| e.stage), Some(Stage::Queued));
        assert!(s.next().await.is_none(), "ended at its lifetime");
        drop(s);
        assert_eq!(Arc::strong_count(&guard), 1);
    }
}
