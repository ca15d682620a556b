//! Where one call goes: the routing decision of docs/architecture.md ("The
//! gateway's routing"), from the call's path and whether its pool has a
//! ready builder. Pure; `proxy` reads the ids and carries the call out.

/// The gateway's own health check, answered before any pool is chosen.
pub const HEALTH: &str = "/grpc.health.v1.Health/Check";

const CONTROL: &str = "/moby.buildkit.v1.Control/";
const BRIDGE: &str = "/moby.buildkit.v1.frontend.LLBBridge/";

/// How a call is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `Control.Session`: a builder chosen by the client's shared key.
    Session,
    /// `Control.Solve`: the builder of the session it names; binds its ref.
    Solve,
    /// `Control.Status`: the builder of the build ref in the request,
    /// waiting for its Solve when it comes first.
    RefInBody,
    /// `LLBBridge.*`: the builder of the build ref in the
    /// `buildkit-controlapi-buildid` header, waiting likewise.
    RefInHeader,
    /// `Control.Info` while no builder is ready: answered by the gateway so
    /// buildx sees a running builder while the pool scales up.
    GatewayInfo,
    /// `Control.ListWorkers` while no builder is ready: the pool's last
    /// answer (or a placeholder), given by the gateway.
    GatewayWorkers,
    /// `Control.ListWorkers` with builders ready: every builder's, merged
    /// (and remembered for when none is ready).
    ListWorkers,
    /// `Control.DiskUsage` (unary) and `Control.Prune` (a stream): every
    /// ready builder's answers, merged.
    FanOut { streaming: bool },
    /// Anything else (the history API, `Info` with builders ready): the
    /// connection's last builder, else any ready one.
    Connection,
}

/// The route of the call to `path`; `ready` says whether the pool has a
/// ready builder, and is asked only for the calls that depend on it.
pub fn route(path: &str, ready: impl FnOnce() -> bool) -> Route {
    if path.starts_with(BRIDGE) {
        return Route::RefInHeader;
    }
    let Some(method) = path.strip_prefix(CONTROL) else { return Route::Connection };
    match method {
        "Session" => Route::Session,
        "Solve" => Route::Solve,
        "Status" => Route::RefInBody,
        "ListWorkers" => {
            if ready() {
                Route::ListWorkers
            } else {
                Route::GatewayWorkers
            }
        }
        "Info" => {
            if ready() {
                Route::Connection
            } else {
                Route::GatewayInfo
            }
        }
        "DiskUsage" => Route::FanOut { streaming: false },
        "Prune" => Route::FanOut { streaming: true },
        _ => Route::Connection,
    }
}

/// In an access list: every client the gateway admits (with a client CA,
/// every certificate it signed).
pub const ANY_CLIENT: &str = "*";

/// Why `client` may not use a pool whose access list is `access`, if it may
/// not. Nobody is admitted by default: an empty list admits nobody.
pub fn denied(access: &[String], client: Option<&str>) -> Option<String> {
    let listed = |name: &str| access.iter().any(|a| a == ANY_CLIENT || a == name);
    if access.iter().any(|a| a == ANY_CLIENT) || client.is_some_and(listed) {
        return None;
    }
    let who = client.map_or("a client without a certificate".to_owned(), |c| format!("client {c:?}"));
    if access.is_empty() {
        return Some(format!(
            "kiln gateway: {who} may not use this pool: its access list is empty, which admits nobody \
             (list client names in the Builder's spec.access.clients, or \"*\" for every client)"
        ));
    }
    Some(format!(
        "kiln gateway: {who} may not use this pool: the certificate's name is not in its access list"
    ))
}

/// Why a build asking for entitlements `requested` may not run on pool
/// `pool`, which allows `allowed`, if it may not. The first words are
/// BuildKit's, as buildx users know them from buildkitd.
pub fn refused_entitlement(allowed: &[String], requested: &[String], pool: &str) -> Option<String> {
    let refused = requested.iter().find(|e| !allowed.contains(e))?;
    Some(format!(
        "granting entitlement {refused} is not allowed by build daemon configuration: pool {pool:?} does not \
         allow it (the Builder's spec.entitlements)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(method: &str) -> String {
        format!("{CONTROL}{method}")
    }

    fn never() -> bool {
        panic!("readiness asked for a call that does not depend on it")
    }

    #[test]
    fn build_calls_route_by_their_ids_whatever_the_pool_state() {
        assert_eq!(route(&control("Session"), never), Route::Session);
        assert_eq!(route(&control("Solve"), never), Route::Solve);
        assert_eq!(route(&control("Status"), never), Route::RefInBody);
        for method in ["Solve", "ReadFile", "Return", "Ping", "Inputs"] {
            assert_eq!(route(&format!("{BRIDGE}{method}"), never), Route::RefInHeader, "{method}");
        }
    }

    #[test]
    fn info_and_list_workers_are_answered_by_the_gateway_while_no_builder_is_ready() {
        assert_eq!(route(&control("Info"), || false), Route::GatewayInfo);
        assert_eq!(route(&control("ListWorkers"), || false), Route::GatewayWorkers);
        assert_eq!(route(&control("Info"), || true), Route::Connection);
        assert_eq!(route(&control("ListWorkers"), || true), Route::ListWorkers);
    }

    #[test]
    fn disk_usage_and_prune_fan_out_and_prune_streams() {
        assert_eq!(route(&control("DiskUsage"), never), Route::FanOut { streaming: false });
        assert_eq!(route(&control("Prune"), never), Route::FanOut { streaming: true });
    }

    #[test]
    fn other_calls_follow_the_connection() {
        for path in [
            control("ListenBuildHistory"),
            control("UpdateBuildHistory"),
            "/moby.buildkit.v1.Control".to_owned(),
            "/moby.filesync.v1.FileSync/DiffCopy".to_owned(),
            "/".to_owned(),
        ] {
            assert_eq!(route(&path, never), Route::Connection, "{path}");
        }
    }

    #[test]
    fn entitlements_are_refused_unless_the_pool_allows_them() {
        let allowed = ["network.host".to_owned()];
        assert_eq!(refused_entitlement(&allowed, &[], "p"), None);
        assert_eq!(refused_entitlement(&allowed, &["network.host".to_owned()], "p"), None);
        let refused =
            refused_entitlement(&allowed, &["security.insecure".to_owned()], "fast").unwrap_or_default();
        assert!(
            refused.starts_with(
                "granting entitlement security.insecure is not allowed by build daemon configuration"
            ) && refused.contains("pool \"fast\""),
            "{refused}"
        );
        assert!(
            refused_entitlement(&[], &["network.host".to_owned()], "p").is_some(),
            "none allowed by default"
        );
    }

    #[test]
    fn an_access_list_admits_only_the_names_it_lists() {
        let access = ["ci".to_owned(), "dev".to_owned()];
        let empty = denied(&[], Some("anyone")).unwrap_or_default();
        assert!(empty.contains("its access list is empty, which admits nobody"), "{empty}");
        assert!(denied(&[], None).is_some(), "an empty list admits nobody");
        let any = [ANY_CLIENT.to_owned()];
        assert_eq!(denied(&any, Some("anyone")), None, "* admits every client");
        assert_eq!(denied(&any, None), None, "* admits a gateway's clients even without certificates");
        assert_eq!(denied(&access, Some("dev")), None);
        let other = denied(&access, Some("ops")).unwrap_or_default();
        assert!(other.contains("client \"ops\" may not use this pool"), "{other}");
        let anonymous = denied(&access, None).unwrap_or_default();
        assert!(anonymous.contains("a client without a certificate"), "{anonymous}");
    }
}
