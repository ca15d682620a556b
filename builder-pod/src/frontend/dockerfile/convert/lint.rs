//! The build checks dockerfile2llb runs while converting
//! (`linter/ruleset.go`, `dockerfile2llb/validations.go`); the ones that
//! need only the Dockerfile text live in [`crate::frontend::dockerfile::linter`].

use crate::frontend::dockerfile::linter::Rule;
use crate::util::strconv::quote;

const fn rule(name: &'static str, description: &'static str, url: &'static str) -> Rule {
    Rule { name, description, url, experimental: false }
}

pub const JSON_ARGS_RECOMMENDED: Rule = rule(
    "JSONArgsRecommended",
    "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals",
    "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/",
);
pub const UNDEFINED_ARG_IN_FROM: Rule = rule(
    "UndefinedArgInFrom",
    "FROM command must use declared ARGs",
    "https://docs.docker.com/go/dockerfile/rule/undefined-arg-in-from/",
);
pub const WORKDIR_RELATIVE_PATH: Rule = rule(
    "WorkdirRelativePath",
    "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes",
    "https://docs.docker.com/go/dockerfile/rule/workdir-relative-path/",
);
pub const UNDEFINED_VAR: Rule = rule(
    "UndefinedVar",
    "Variables should be defined before their use",
    "https://docs.docker.com/go/dockerfile/rule/undefined-var/",
);
pub const MULTIPLE_INSTRUCTIONS_DISALLOWED: Rule = rule(
    "MultipleInstructionsDisallowed",
    "Multiple instructions of the same type should not be used in the same stage",
    "https://docs.docker.com/go/dockerfile/rule/multiple-instructions-disallowed/",
);
pub const LEGACY_KEY_VALUE_FORMAT: Rule = rule(
    "LegacyKeyValueFormat",
    "Legacy key/value format with whitespace separator should not be used",
    "https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/",
);
pub const INVALID_BASE_IMAGE_PLATFORM: Rule =
    rule("InvalidBaseImagePlatform", "Base image platform does not match expected target platform", "");
pub const REDUNDANT_TARGET_PLATFORM: Rule = rule(
    "RedundantTargetPlatform",
    "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
    "https://docs.docker.com/go/dockerfile/rule/redundant-target-platform/",
);
pub const SECRETS_USED_IN_ARG_OR_ENV: Rule = rule(
    "SecretsUsedInArgOrEnv",
    "Sensitive data should not be used in the ARG or ENV commands",
    "https://docs.docker.com/go/dockerfile/rule/secrets-used-in-arg-or-env/",
);
pub const INVALID_DEFAULT_ARG_IN_FROM: Rule = rule(
    "InvalidDefaultArgInFrom",
    "Default value for global ARG results in an empty or invalid base image name",
    "https://docs.docker.com/go/dockerfile/rule/invalid-default-arg-in-from/",
);
pub const FROM_PLATFORM_FLAG_CONST_DISALLOWED: Rule = rule(
    "FromPlatformFlagConstDisallowed",
    "FROM --platform flag should not use a constant value",
    "https://docs.docker.com/go/dockerfile/rule/from-platform-flag-const-disallowed/",
);
pub const COPY_IGNORED_FILE: Rule = rule(
    "CopyIgnoredFile",
    "Attempting to Copy file that is excluded by .dockerignore",
    "https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/",
);
pub const EXPOSE_PROTO_CASING: Rule = rule(
    "ExposeProtoCasing",
    "Protocol in EXPOSE instruction should be lowercase",
    "https://docs.docker.com/go/dockerfile/rule/expose-proto-casing/",
);
pub const EXPOSE_INVALID_FORMAT: Rule = rule(
    "ExposeInvalidFormat",
    "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release",
    "https://docs.docker.com/go/dockerfile/rule/expose-invalid-format/",
);

pub fn json_args_recommended(instruction: &str) -> String {
    format!(
        "JSON arguments recommended for {instruction} to prevent unintended behavior related to OS signals"
    )
}

pub fn undefined_arg_in_from(arg: &str, suggestion: Option<&str>) -> String {
    let mut out = format!("FROM argument '{arg}' is not declared");
    if let Some(s) = suggestion {
        out.push_str(&format!(" (did you mean {s}?)"));
    }
    out
}

pub fn workdir_relative_path(workdir: &str) -> String {
    format!("Relative workdir {} can have unexpected results if the base image changes", quote(workdir))
}

pub fn undefined_var(var: &str, suggestion: Option<&str>) -> String {
    let mut out = format!("Usage of undefined variable '${var}'");
    if let Some(s) = suggestion {
        out.push_str(&format!(" (did you mean ${s}?)"));
    }
    out
}

pub fn multiple_instructions(instruction: &str) -> String {
    format!(
        "Multiple {instruction} instructions should not be used in the same stage because only the last one will be used"
    )
}

pub fn legacy_key_value(instruction: &str) -> String {
    format!("\"{instruction} key=value\" should be used instead of legacy \"{instruction} key value\" format")
}

pub fn invalid_base_image_platform(image: &str, expected: &str, actual: &str) -> String {
    format!(
        "Base image {image} was pulled with platform {}, expected {} for current build",
        quote(actual),
        quote(expected)
    )
}

pub fn redundant_target_platform(platform: &str) -> String {
    format!("Setting platform to predefined {platform} in FROM is redundant as this is the default behavior")
}

pub fn secrets_used(instruction: &str, key: &str) -> String {
    format!("Do not use ARG or ENV instructions for sensitive data ({instruction} {})", quote(key))
}

pub fn invalid_default_arg_in_from(base: &str) -> String {
    format!("Default value for ARG {base} results in empty or invalid base image name")
}

pub fn from_platform_const(platform: &str) -> String {
    format!("FROM --platform flag should not use constant value {}", quote(platform))
}

pub fn copy_ignored_file(instruction: &str, file: &str) -> String {
    format!("Attempting to {instruction} file {} that is excluded by .dockerignore", quote(file))
}

pub fn expose_proto_casing(port: &str) -> String {
    format!("Defined protocol '{port}' in EXPOSE instruction should be lowercase")
}

pub fn expose_invalid_format(port: &str) -> String {
    format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'")
}

/// `validateNoSecretKey`: a `_`-separated word of the key names a secret
/// (`token`, `password`, …) and none marks it harmless (`public`, `file`, `version`).
pub fn looks_secret(key: &str) -> bool {
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
