//! The checks BuildKit runs on the instructions alone, while it parses them
//! (`instructions/parse.go`) and before it converts them
//! (`dockerfile2llb/convert.go` `validateStageNames`, `validateCommandCasing`).
//! They take plain names and lines, so the linter needs nothing from the
//! instruction types.

use super::{Warning, rules};

/// A stage name in `FROM … AS name` should be lower-case, and `AS` should be
/// written in the case of `FROM`. `args` are FROM's arguments.
pub(crate) fn from_casing(keyword: &str, args: &[String], start: usize, end: usize) -> Vec<Warning> {
    let mut warnings = Vec::new();
    if let [_, _, name] = args
        && *name != name.to_lowercase()
    {
        warnings.push(Warning::new(&rules::STAGE_NAME_CASING, rules::stage_name_casing(name), start, end));
    }
    if let [_, as_, _, ..] = args {
        let from_lower = keyword == keyword.to_lowercase();
        let from_upper = keyword == keyword.to_uppercase();
        let mismatch =
            if from_lower { *as_ != as_.to_lowercase() } else { from_upper && *as_ != as_.to_uppercase() };
        if mismatch {
            let message = rules::from_as_casing(keyword, as_);
            warnings.push(Warning::new(&rules::FROM_AS_CASING, message, start, end));
        }
    }
    warnings
}

/// A comment directly above ARG/FROM should describe what it defines
/// (`validateDefinitionDescription`, an experimental check).
pub(crate) fn definition_description(
    instruction: &str,
    keys: &[&str],
    comments: &[String],
    start: usize,
    end: usize,
) -> Option<Warning> {
    let (Some(last), Some(first_key)) = (comments.last(), keys.first()) else { return None };
    let word = last.split(' ').next().unwrap_or_default();
    if keys.contains(&word) {
        return None;
    }
    let example = if keys.len() > 1 { "<arg_key>" } else { first_key };
    let message = rules::invalid_definition_description(instruction, example);
    Some(Warning::new(&rules::INVALID_DEFINITION_DESCRIPTION, message, start, end))
}

/// Reserved and repeated stage names (`validateStageNames`), given the named
/// stages in file order with their lines.
pub(crate) fn stage_names<'a>(named: impl IntoIterator<Item = (&'a str, usize, usize)>) -> Vec<Warning> {
    let mut warnings = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (name, start, end) in named {
        if matches!(name, "context" | "scratch") {
            warnings.push(Warning::new(
                &rules::RESERVED_STAGE_NAME,
                rules::reserved_stage_name(name),
                start,
                end,
            ));
        }
        if seen.contains(&name) {
            let message = rules::duplicate_stage_name(name);
            warnings.push(Warning::new(&rules::DUPLICATE_STAGE_NAME, message, start, end));
        }
        seen.push(name);
    }
    warnings
}

/// Instructions should share one casing (`validateCommandCasing`): each
/// keyword (FROM included) written against the majority is reported.
pub(crate) fn instruction_casing(keywords: &[(&str, usize, usize)]) -> Vec<Warning> {
    let (mut lower, mut upper) = (0, 0);
    for (keyword, _, _) in keywords {
        if *keyword == keyword.to_lowercase() {
            lower += 1;
        } else if *keyword == keyword.to_uppercase() {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    keywords
        .iter()
        .filter_map(|&(keyword, start, end)| {
            let casing = if majority_lower && keyword.to_lowercase() != keyword {
                "lowercase"
            } else if !majority_lower && keyword.to_uppercase() != keyword {
                "uppercase"
            } else {
                return None;
            };
            let message = rules::consistent_instruction_casing(keyword, casing);
            Some(Warning::new(&rules::CONSISTENT_INSTRUCTION_CASING, message, start, end))
        })
        .collect()
}

/// `validateNoSecretKey`: a `_`-separated word of the key names a secret
/// (`token`, `password`, …) and none marks it harmless (`public`, `file`, `version`).
pub(crate) fn looks_secret(key: &str) -> bool {
    const DENY: [&str; 10] = [
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOW: [&str; 3] = ["public", "file", "version"];
    let lower = key.to_lowercase();
    let words: Vec<&str> = lower.split('_').collect();
    words.iter().any(|w| DENY.contains(w)) && !words.iter().any(|w| ALLOW.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_keys_are_recognised_by_whole_words() {
        for key in
            ["SECRET_PASSPHRASE", "SUPER_Secret", "password", "auth", "super_duper_secret_token", "git_key"]
        {
            assert!(looks_secret(key), "{key}");
        }
        for key in ["KEYBOARD", "monkey", "PUBLIC_KEY", "key_file", "VERSION_TOKEN", "authors"] {
            assert!(!looks_secret(key), "{key}");
        }
    }
}
