//! The `# check=` configuration (linter `ParseLintOptions`, `Config`): which
//! rules are skipped, which experimental ones run, and whether any reported
//! check fails the build.

use super::Rule;
use crate::frontend::dockerfile::parser::DirectiveParser;
use crate::util::strconv::{NumError, parse_bool, quote};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LintError {
    #[error("invalid check option {}", quote(.0))]
    InvalidOption(String),
    #[error("failed to parse check option {}: {source}", quote(.option))]
    InvalidBool { option: String, source: NumError },
}

/// The value of a `# check=` directive (linter `ParseLintOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CheckConfig {
    pub skip_all: bool,
    pub skip: Vec<String>,
    pub experimental_all: bool,
    pub experimental: Vec<String>,
    /// `error=true`: any reported check fails the build.
    pub error: bool,
}

impl CheckConfig {
    /// Parses `skip=A,B;error=true;experimental=all`.
    pub(crate) fn parse(value: &str) -> Result<Self, LintError> {
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
                    config.error = parse_bool(v.trim())
                        .map_err(|source| LintError::InvalidBool { option: part.to_owned(), source })?;
                }
                other => return Err(LintError::InvalidOption(other.to_owned())),
            }
        }
        Ok(config)
    }

    /// Adds `other`'s switches to these (`Linter.WithMergedConfig`).
    pub(crate) fn merge(&mut self, other: &CheckConfig) {
        self.experimental_all |= other.experimental_all;
        self.experimental.extend(other.experimental.iter().cloned());
        self.skip_all |= other.skip_all;
        self.skip.extend(other.skip.iter().cloned());
    }

    /// This config merged with the first `check=` comment directly above an
    /// instruction, if it parses (`WithMergedConfigFromComments`).
    pub(crate) fn with_comments(&self, comments: &[String]) -> CheckConfig {
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
    pub(crate) fn enabled(&self, rule: &Rule) -> bool {
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
    use crate::frontend::dockerfile::linter::rules::{
        FROM_AS_CASING, INVALID_DEFINITION_DESCRIPTION, STAGE_NAME_CASING,
    };

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
