//! A build's progress: what `Control.Status` streams to the client
//! (docs/protocol.md §5, "Status stream").
//!
//! Every update is kept so a `Status` call that arrives late still sees the
//! whole build, and is fanned out to the callers following it live.

use std::sync::Mutex;

use futures::Stream;
use kiln_proto::buildkit::google::protobuf::Timestamp;
use kiln_proto::buildkit::moby::buildkit::v1::{StatusResponse, Vertex, VertexLog, VertexStatus};
use tokio::sync::broadcast;

/// The current time as progress messages carry it.
pub(crate) fn now() -> Timestamp {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

#[derive(Debug)]
pub(crate) struct Progress {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    history: Vec<StatusResponse>,
    /// `None` once the build is over: followers end after the history.
    live: Option<broadcast::Sender<StatusResponse>>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub(crate) fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self { state: Mutex::new(State { history: Vec::new(), live: Some(tx) }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn send(&self, update: StatusResponse) {
        let mut state = self.lock();
        if let Some(live) = &state.live {
            let _ = live.send(update.clone());
            state.history.push(update);
        }
    }

    pub(crate) fn vertex(&self, vertex: Vertex) {
        self.send(StatusResponse { vertexes: vec![vertex], ..StatusResponse::default() });
    }

    pub(crate) fn status(&self, status: VertexStatus) {
        self.send(StatusResponse { statuses: vec![status], ..StatusResponse::default() });
    }

    /// Output of a step: stream 1 is stdout, 2 stderr.
    pub(crate) fn log(&self, vertex: &str, stream: i64, msg: Vec<u8>) {
        let log = VertexLog { vertex: vertex.to_owned(), timestamp: Some(now()), stream, msg };
        self.send(StatusResponse { logs: vec![log], ..StatusResponse::default() });
    }

    /// Ends the stream for every follower.
    pub(crate) fn close(&self) {
        self.lock().live = None;
    }

    /// Everything so far, then live updates until the build ends.
    pub(crate) fn follow(&self) -> impl Stream<Item = StatusResponse> + Send + 'static {
        let (history, live) = {
            let state = self.lock();
            (state.history.clone(), state.live.as_ref().map(broadcast::Sender::subscribe))
        };
        let live = futures::stream::unfold(live, |rx| async move {
            let mut rx = rx?;
            loop {
                match rx.recv().await {
                    Ok(update) => return Some((update, Some(rx))),
                    // A slow follower misses updates rather than stalling the build.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        futures::StreamExt::chain(futures::stream::iter(history), live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use kiln_proto::buildkit::moby::buildkit::v1::Vertex;

    fn update(name: &str) -> StatusResponse {
        StatusResponse {
            vertexes: vec![Vertex { name: name.into(), ..Vertex::default() }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn late_followers_see_the_history_and_everyone_sees_the_end() {
        let p = Progress::new();
        p.send(update("a"));
        let early = p.follow();
        p.send(update("b"));
        let late = p.follow();
        p.send(update("c"));
        p.close();
        p.send(update("ignored after close"));
        let names =
            |s: Vec<StatusResponse>| s.into_iter().map(|u| u.vertexes[0].name.clone()).collect::<Vec<_>>();
        assert_eq!(names(early.collect().await), ["a", "b", "c"]);
        assert_eq!(names(late.collect().await), ["a", "b", "c"]);
        assert_eq!(names(p.follow().collect().await), ["a", "b", "c"]);
    }
}
