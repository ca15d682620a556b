//! Build checks (`frontend/dockerfile/linter`): the rules this front half
//! can decide from the Dockerfile text alone, their warning texts, and the
//! `# check=skip=…;error=…;experimental=…` configuration that filters them.

use super::parser::DirectiveParser;
use crate::util::strconv::{self, NumError, quote};

/// A build check as BuildKit names and documents it.
#[derive(Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    pub url: &'static str,
    /// Reported only when enabled with `experimental=`.
    pub experimental: bool,
}

pub const NO_EMPTY_CONTINUATION: Rule = Rule {
    name: "NoEmptyContinuation",
    description: "Empty continuation lines will become errors in a future release",
    url: "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/",
    experimental: false,
};

pub const STAGE_NAME_CASING: Rule = Rule {
    name: "StageNameCasing",
    description: "Stage names should be lowercase",
    url: "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/",
    experimental: false,
};

pub const FROM_AS_CASING: Rule = Rule {
    name: "FromAsCasing",
    description: "The 'as' keyword should match the case of the 'from' keyword",
    url: "https://docs.docker.com/go/dockerfile/rule/from-as-casing/",
    experimental: false,
};

pub const CONSISTENT_INSTRUCTION_CASING: Rule = Rule {
    name: "ConsistentInstructionCasing",
    description: "All commands within the Dockerfile should use the same casing (either upper or lower)",
    url: "https://docs.docker.com/go/dockerfile/rule/consistent-instruction-casing/",
    experimental: false,
};

pub const DUPLICATE_STAGE_NAME: Rule = Rule {
    name: "DuplicateStageName",
    description: "Stage names should be unique",
    url: "https://docs.docker.com/go/dockerfile/rule/duplicate-stage-name/",
    experimental: false,
};

pub const RESERVED_STAGE_NAME: Rule = Rule {
    name: "ReservedStageName",
    description: "Reserved words should not be used as stage names",
    url: "https://docs.docker.com/go/dockerfile/rule/reserved-stage-name/",
    experimental: false,
};

pub const MAINTAINER_DEPRECATED: Rule = Rule {
    name: "MaintainerDeprecated",
    description: "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
    url: "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/",
    experimental: false,
};

pub const INVALID_DEFINITION_DESCRIPTION: Rule = Rule {
    name: "InvalidDefinitionDescription",
    description: "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.",
    url: "https://docs.docker.com/go/dockerfile/rule/invalid-definition-description/",
    experimental: true,
};

/// One check that fired, with the lines of the instruction it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub rule: &'static Rule,
    pub message: String,
    pub start_line: usize,
    pub end_line: usize,
}

impl Warning {
    pub(crate) fn new(rule: &'static Rule, message: String, start_line: usize, end_line: usize) -> Self {
        Self { rule, message, start_line, end_line }
    }

    pub(crate) fn stage_name_casing(name: &str, start: usize, end: usize) -> Self {
        Self::new(&STAGE_NAME_CASING, format!("Stage name '{name}' should be lowercase"), start, end)
    }

    pub(crate) fn from_as_casing(from: &str, as_: &str, start: usize, end: usize) -> Self {
        Self::new(&FROM_AS_CASING, format!("'{as_}' and '{from}' keywords' casing do not match"), start, end)
    }

    pub(crate) fn consistent_casing(command: &str, casing: &str, start: usize, end: usize) -> Self {
        let message = format!("Command '{command}' should match the case of the command majority ({casing})");
        Self::new(&CONSISTENT_INSTRUCTION_CASING, message, start, end)
    }

    pub(crate) fn duplicate_stage_name(name: &str, start: usize, end: usize) -> Self {
        let message = format!("Duplicate stage name {}, stage names should be unique", quote(name));
        Self::new(&DUPLICATE_STAGE_NAME, message, start, end)
    }

    pub(crate) fn reserved_stage_name(name: &str, start: usize, end: usize) -> Self {
        let message = format!("Stage name should not use the same name as reserved stage {}", quote(name));
        Self::new(&RESERVED_STAGE_NAME, message, start, end)
    }

    pub(crate) fn maintainer_deprecated(start: usize, end: usize) -> Self {
        let message = "Maintainer instruction is deprecated in favor of using label".to_owned();
        Self::new(&MAINTAINER_DEPRECATED, message, start, end)
    }

    pub(crate) fn invalid_definition_description(
        instruction: &str,
        key: &str,
        start: usize,
        end: usize,
    ) -> Self {
        let message = format!("Comment for {instruction} should follow the format: `# {key} <description>`");
        Self::new(&INVALID_DEFINITION_DESCRIPTION, message, start, end)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LintError {
    #[error("invalid check option {}", quote(.0))]
    InvalidOption(String),
    #[error("failed to parse check option {}: {source}", quote(.option))]
    InvalidBool { option: String, source: NumError },
}

/// The value of a `# check=` directive (linter `ParseLintOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    pub skip_all: bool,
    pub skip: Vec<String>,
    pub experimental_all: bool,
    pub experimental: Vec<String>,
    /// `error=true`: any reported check fails the build.
    pub error: bool,
}

impl CheckConfig {
    /// Parses `skip=A,B;error=true;experimental=all`.
    pub fn parse(value: &str) -> Result<Self, LintError> {
        let mut config = Self::default();
        let value = value.trim();
        if value.is_empty() {
            return Ok(config);
        }
        for part in value.splitn(3, ';') {
            let Some((key, v)) = part.split_once('=') else {
                return Err(LintError::InvalidOption(part.to_owned()));
            };
            let list = |v: &str| v.split(',').map(|r| r.trim().to_owned()).collect::<Vec<_>>();
            match key.trim() {
                "skip" if v.trim() == "all" => config.skip_all = true,
                "skip" => config.skip = list(v.trim()),
                "experimental" if v.trim() == "all" => config.experimental_all = true,
                "experimental" => config.experimental = list(v.trim()),
                "error" => {
                    config.error = strconv::parse_bool(v.trim())
                        .map_err(|source| LintError::InvalidBool { option: part.to_owned(), source })?;
                }
                other => return Err(LintError::InvalidOption(other.to_owned())),
            }
        }
        Ok(config)
    }

    /// Adds `other`'s switches to these (`Linter.WithMergedConfig`).
    pub fn merge(&mut self, other: &CheckConfig) {
        self.experimental_all |= other.experimental_all;
        self.experimental.extend(other.experimental.iter().cloned());
        self.skip_all |= other.skip_all;
        self.skip.extend(other.skip.iter().cloned());
    }

    /// This config merged with the first `check=` comment directly above an
    /// instruction, if it parses (`WithMergedConfigFromComments`).
    pub fn with_comments(&self, comments: &[String]) -> CheckConfig {
        let mut merged = self.clone();
        for comment in comments {
            let mut parser = DirectiveParser::with_prefix("");
            let Ok(Some(directive)) = parser.parse_line(comment) else { continue };
            if directive.name != "check" {
                continue;
            }
            let value = directive.value.split(' ').next().unwrap_or_default();
            if let Ok(config) = CheckConfig::parse(value) {
                merged.merge(&config);
            }
            return merged;
        }
        merged
    }

    /// Whether `rule` is reported under this config.
    pub fn enabled(&self, rule: &Rule) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.iter().any(|r| r == rule.name)
        } else {
            !self.skip_all && !self.skip.iter().any(|r| r == rule.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_options() {
        let c = CheckConfig::parse(" skip=JSONArgsRecommended, StageNameCasing ;error=true").unwrap();
        assert_eq!(c.skip, ["JSONArgsRecommended", "StageNameCasing"]);
        assert!(c.error && !c.skip_all);
        assert!(!c.enabled(&STAGE_NAME_CASING));
        assert!(c.enabled(&FROM_AS_CASING));
        assert!(!c.enabled(&INVALID_DEFINITION_DESCRIPTION));

        let c = CheckConfig::parse("skip=all;experimental=all").unwrap();
        assert!(!c.enabled(&FROM_AS_CASING));
        assert!(c.enabled(&INVALID_DEFINITION_DESCRIPTION));
        assert_eq!(CheckConfig::parse("").unwrap(), CheckConfig::default());

        let cases = [
            ("skip", r#"invalid check option "skip""#),
            ("nope=1", r#"invalid check option "nope""#),
            (
                "error=yes",
                r#"failed to parse check option "error=yes": strconv.ParseBool: parsing "yes": invalid syntax"#,
            ),
            // Only three parts are split off; the rest stays in the third.
            ("skip=a;skip=b;nope;x", r#"invalid check option "nope;x""#),
        ];
        for (input, want) in cases {
            let err = CheckConfig::parse(input).unwrap_err().to_string();
            assert!(err.starts_with(want), "{input}: {err}");
        }
    }

    #[test]
    fn comments_adjust_the_config() {
        let base = CheckConfig::default();
        let c = base.with_comments(&["unrelated".into(), "check=skip=FromAsCasing trailing".into()]);
        assert!(!c.enabled(&FROM_AS_CASING));
        let c = base.with_comments(&["check=bogus".into(), "check=skip=FromAsCasing".into()]);
        assert!(c.enabled(&FROM_AS_CASING), "only the first check comment counts");
    }
}
