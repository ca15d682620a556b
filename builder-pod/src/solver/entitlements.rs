//! Entitlements: what a build may do beyond the sandbox (BuildKit's
//! `util/entitlements`). A build gets one only when the daemon allows it
//! (`--allow-insecure-entitlement`) *and* the client asks for it (`buildx
//! build --allow`); every vertex of every definition is checked before the
//! solver runs or looks anything up, so a cached step needs the entitlement
//! as much as one that runs.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use kiln_proto::buildkit::pb;

use super::llb::Graph;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entitlement {
    /// `RUN --network=host`: the step shares kilnd's network namespace.
    NetworkHost,
    /// `RUN --security=insecure`: a privileged step.
    SecurityInsecure,
}

impl Entitlement {
    pub const ALL: [Self; 2] = [Self::NetworkHost, Self::SecurityInsecure];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetworkHost => "network.host",
            Self::SecurityInsecure => "security.insecure",
        }
    }
}

impl fmt::Display for Entitlement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Entitlement {
    type Err = EntitlementError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "network.host" => Ok(Self::NetworkHost),
            "security.insecure" => Ok(Self::SecurityInsecure),
            // BuildKit's CDI devices (`device=NAME`); kilnd has none to grant.
            _ if s == "device" || s.starts_with("device=") => Err(EntitlementError::Device),
            _ => Err(EntitlementError::Unknown(s.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntitlementError {
    #[error("unknown entitlement {0} (kilnd knows network.host and security.insecure)")]
    Unknown(String),
    #[error("the device entitlement is not supported: kilnd has no CDI devices")]
    Device,
    /// The client asked for what the daemon does not allow. The first words
    /// are BuildKit's own.
    #[error(
        "granting entitlement {0} is not allowed by build daemon configuration: the builder must allow it \
         (kilnd --allow-insecure-entitlement {0}, insecure-entitlements in its configuration file, or the \
         Kiln pool's spec.entitlements)"
    )]
    NotAllowedByDaemon(Entitlement),
    /// A step needs what the client did not ask for.
    #[error(
        "{entitlement} is not allowed: step {step:?} needs it; ask for it with `--allow {entitlement}` (buildx build, buildctl build)"
    )]
    NotGranted { entitlement: Entitlement, step: String },
}

/// The entitlements a daemon allows, or a build was granted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Entitlements(BTreeSet<Entitlement>);

impl Entitlements {
    /// Parses entitlement names; an unknown one is an error that names it.
    pub(crate) fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, EntitlementError> {
        names.iter().map(|n| n.as_ref().trim().parse()).collect::<Result<_, _>>().map(Self)
    }

    pub(crate) fn contains(&self, e: Entitlement) -> bool {
        self.0.contains(&e)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = Entitlement> + '_ {
        self.0.iter().copied()
    }

    /// What a build that asked for `requested` gets from a daemon that
    /// allows `self` (BuildKit's `WhiteList`): everything it asked for, or an
    /// error naming the first entitlement the daemon does not allow.
    pub(crate) fn grant<S: AsRef<str>>(&self, requested: &[S]) -> Result<Self, EntitlementError> {
        let requested = Self::parse(requested)?;
        let refused = requested.iter().find(|e| !self.contains(*e));
        match refused {
            Some(refused) => Err(EntitlementError::NotAllowedByDaemon(refused)),
            None => Ok(requested),
        }
    }

    /// Every entitlement a step of `graph` needs is in this set.
    pub(crate) fn check(&self, graph: &Graph) -> Result<(), EntitlementError> {
        for vertex in &graph.vertices {
            if let Some(pb::op::Op::Exec(exec)) = vertex.operation() {
                for needed in needs(exec) {
                    if !self.contains(needed) {
                        return Err(EntitlementError::NotGranted {
                            entitlement: needed,
                            step: vertex.name(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

impl FromIterator<Entitlement> for Entitlements {
    fn from_iter<I: IntoIterator<Item = Entitlement>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// The entitlements an exec op needs to run as it asks.
pub(crate) fn needs(exec: &pb::ExecOp) -> impl Iterator<Item = Entitlement> {
    let host = exec.network == pb::NetMode::Host as i32;
    let insecure = exec.security == pb::SecurityMode::Insecure as i32;
    [(host, Entitlement::NetworkHost), (insecure, Entitlement::SecurityInsecure)]
        .into_iter()
        .filter_map(|(needed, e)| needed.then_some(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solver::llb::tests::{DefBuilder, source};

    fn set(names: &[&str]) -> Entitlements {
        Entitlements::parse(names).unwrap()
    }

    fn exec(network: pb::NetMode, security: pb::SecurityMode) -> Graph {
        let mut b = DefBuilder::default();
        let root = b.op(source("docker-image://busybox"));
        let op = pb::Op {
            inputs: vec![pb::Input { digest: root, index: 0 }],
            op: Some(pb::op::Op::Exec(pb::ExecOp {
                meta: Some(pb::Meta { args: vec!["true".into()], ..Default::default() }),
                network: network as i32,
                security: security as i32,
                mounts: vec![pb::Mount { input: 0, dest: "/".into(), output: 0, ..Default::default() }],
                ..Default::default()
            })),
            ..Default::default()
        };
        let run = b.named(op, "RUN true");
        Graph::parse(&b.finish(Some(&run))).unwrap()
    }

    #[test]
    fn a_build_gets_what_it_asks_for_only_when_the_daemon_allows_it() {
        let daemon = set(&["network.host"]);
        assert_eq!(daemon.grant(&["network.host"]).unwrap(), set(&["network.host"]));
        assert_eq!(daemon.grant::<&str>(&[]).unwrap(), Entitlements::default());
        let err = daemon.grant(&["network.host", "security.insecure"]).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "granting entitlement security.insecure is not allowed by build daemon configuration: "
            ) && err.contains("--allow-insecure-entitlement security.insecure"),
            "{err}"
        );
        let err = Entitlements::default().grant(&["network.host"]).unwrap_err();
        assert_eq!(err, EntitlementError::NotAllowedByDaemon(Entitlement::NetworkHost));
    }

    #[test]
    fn unknown_names_and_devices_are_errors_that_say_so() {
        let err = Entitlements::parse(&["security.insecure", "root.please"]).unwrap_err().to_string();
        assert!(err.starts_with("unknown entitlement root.please"), "{err}");
        assert_eq!(Entitlements::parse(&["device=nvidia.com/gpu"]), Err(EntitlementError::Device));
        assert_eq!(Entitlements::default().grant(&["device"]), Err(EntitlementError::Device));
    }

    #[test]
    fn every_step_needing_an_entitlement_must_have_it() {
        let sandboxed = exec(pb::NetMode::Unset, pb::SecurityMode::Sandbox);
        assert_eq!(Entitlements::default().check(&sandboxed), Ok(()));
        assert_eq!(set(&[]).check(&exec(pb::NetMode::None, pb::SecurityMode::Sandbox)), Ok(()));

        let host = exec(pb::NetMode::Host, pb::SecurityMode::Sandbox);
        let err = Entitlements::default().check(&host).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network.host is not allowed: step \"RUN true\" needs it; ask for it with `--allow network.host` \
             (buildx build, buildctl build)"
        );
        assert_eq!(set(&["network.host"]).check(&host), Ok(()));

        let both = exec(pb::NetMode::Host, pb::SecurityMode::Insecure);
        let err = set(&["network.host"]).check(&both).unwrap_err();
        assert!(matches!(
            err,
            EntitlementError::NotGranted { entitlement: Entitlement::SecurityInsecure, .. }
        ));
        assert_eq!(set(&["network.host", "security.insecure"]).check(&both), Ok(()));
    }
}
