//! Build checks (`frontend/dockerfile/linter`): every rule with its message
//! ([`rules`]), the `# check=skip=…;error=…;experimental=…` configuration
//! that filters them ([`CheckConfig`]), and the checks that need only the
//! parsed instructions ([`checks`]). The checks that need a build's
//! arguments and images run while converting, as dockerfile2llb runs them.

pub(crate) mod checks;
mod config;
pub(crate) mod rules;

pub(crate) use self::config::{CheckConfig, LintError};

/// A build check as BuildKit names and documents it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    pub url: &'static str,
    /// Reported only when enabled with `experimental=`.
    pub experimental: bool,
}

/// One check that fired, with the lines of the instruction it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Warning {
    pub rule: &'static Rule,
    pub message: String,
    pub start_line: usize,
    pub end_line: usize,
}

impl Warning {
    pub(crate) fn new(rule: &'static Rule, message: String, start_line: usize, end_line: usize) -> Self {
        Self { rule, message, start_line, end_line }
    }
}
