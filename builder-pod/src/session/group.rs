//! A build's sessions: the ids it may call back into and the manager that
//! finds them (BuildKit's `session.Group` and `Manager.Any`,
//! `session/group.go`; docs/protocol.md §3.3).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{Session, SessionError, SessionManager};

/// How long each session of a group is waited for: a client may open its
/// session after the Solve that names it (upstream: 5 s per id in `Any`).
const SESSION_WAIT: Duration = Duration::from_secs(5);

/// The sessions a build may use, its own first.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    manager: Arc<SessionManager>,
    ids: Vec<String>,
}

impl Group {
    /// The sessions `ids` in order; an empty id names none and a repeated
    /// one is waited for once.
    pub(crate) fn new(manager: Arc<SessionManager>, ids: impl IntoIterator<Item = String>) -> Self {
        let mut kept: Vec<String> = Vec::new();
        for id in ids {
            if !id.is_empty() && !kept.contains(&id) {
                kept.push(id);
            }
        }
        Self { manager, ids: kept }
    }

    /// The same sessions with `id` tried first: an op may name the session
    /// it reads from (`local.session`).
    pub(crate) fn preferring(&self, id: Option<&str>) -> Self {
        let first = id.map(str::to_owned);
        Self::new(Arc::clone(&self.manager), first.into_iter().chain(self.ids.iter().cloned()))
    }

    pub(crate) fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The first session of the group that is open; when none is, why the
    /// last one was not found.
    pub(crate) async fn first(&self) -> Result<Arc<Session>, SessionError> {
        match self.each(|session| async move { Ok::<_, Infallible>(Some(session)) }).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(missing)) => Err(missing.unwrap_or(SessionError::NoSession)),
            Err(never) => match never {},
        }
    }

    /// Calls `f` on each open session in order until one answers: `f`
    /// returns `Ok(None)` when its session cannot (it does not serve the
    /// service, or has nothing for the request), and the next is tried; an
    /// error ends the search. `None` when no session answered.
    pub(crate) async fn any<T, E, F, Fut>(&self, f: F) -> Result<Option<T>, E>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        Ok(self.each(f).await?.ok())
    }

    /// The search behind [`Group::first`] and [`Group::any`]: a session that
    /// has not arrived within [`SESSION_WAIT`] is skipped, remembered as the
    /// last one missing.
    async fn each<T, E, F, Fut>(&self, mut f: F) -> Result<Result<T, Option<SessionError>>, E>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let mut missing = None;
        for id in &self.ids {
            match self.manager.get(id, SESSION_WAIT).await {
                Ok(session) => {
                    if let Some(found) = f(session).await? {
                        return Ok(Ok(found));
                    }
                }
                Err(e) => missing = Some(e),
            }
        }
        Ok(Err(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_kept_once_in_order_without_empty_ones() {
        let manager = SessionManager::new();
        let group = Group::new(Arc::clone(&manager), ["a", "", "b", "a"].map(String::from));
        assert_eq!(group.ids(), ["a", "b"]);
        assert_eq!(group.preferring(Some("b")).ids(), ["b", "a"]);
        assert_eq!(group.preferring(Some("c")).ids(), ["c", "a", "b"]);
        assert_eq!(group.preferring(None).ids(), ["a", "b"]);
    }

    #[tokio::test]
    async fn an_empty_group_answers_at_once() {
        let group = Group::new(SessionManager::new(), [String::new()]);
        let start = std::time::Instant::now();
        let err = group.first().await.unwrap_err();
        assert_eq!(err.to_string(), "the build names no session");
        let none: Option<()> = group.any(|_| async { Ok::<_, Infallible>(Some(())) }).await.unwrap();
        assert!(none.is_none());
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
