//! Field errors and the value formats Kiln's resources share: Go-style
//! durations, Kubernetes quantities and OCI platforms.
//!
//! The API server checks the same formats through the schemas' patterns and
//! CEL rules; these parsers let the controller read the values and report a
//! spec that slipped past (an older CRD, `--validate=false`) as a condition
//! instead of failing.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// One field of a spec that is not acceptable, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field's path from the object root, e.g. `spec.replicas.min`.
    pub field: String,
    /// What is wrong with it, phrased so the user knows what to change.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Every problem found in one spec, so a user fixes them all in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldErrors(pub Vec<FieldError>);

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl FieldErrors {
    /// `Ok` when nothing was found.
    pub(crate) fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }
}

/// The schema pattern of a duration field: Go's `time.ParseDuration` syntax
/// without a sign (`90s`, `1h30m`, `1.5h`, `0`).
pub const DURATION_PATTERN: &str = r"^(0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$";

/// Parses a duration in the syntax of [`DURATION_PATTERN`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const UNITS: &str = "ns, us, ms, s, m or h";
    let bad = |why: String| format!("{text:?} is not a duration like 90s, 10m or 1h30m: {why}");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(bad("it is empty".into()));
    }
    let mut rest = text;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if int_len == 0 {
            return Err(bad("each part starts with a number".into()));
        }
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(f) => {
                let len = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                if len == 0 {
                    return Err(bad("a decimal point needs digits after it".into()));
                }
                f.split_at(len)
            }
            None => ("", after),
        };
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad(format!("{int}{frac} has no unit ({UNITS})"))),
            other => return Err(bad(format!("unknown unit {other:?} (use {UNITS})"))),
        };
        let too_long = || bad("it is too long".into());
        let int: u128 = int.parse().map_err(|_| too_long())?;
        let mut part = int.checked_mul(scale).ok_or_else(too_long)?;
        if !frac.is_empty() {
            let digits = u32::try_from(frac.len()).map_err(|_| too_long())?;
            let denom = 10u128.checked_pow(digits).ok_or_else(too_long)?;
            let num: u128 = frac.parse().map_err(|_| too_long())?;
            part = part
                .checked_add(num.checked_mul(scale).ok_or_else(too_long)? / denom)
                .ok_or_else(too_long)?;
        }
        nanos = nanos.checked_add(part).ok_or_else(too_long)?;
        rest = after;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| bad("it is too long".into()))?;
    // The remainder of a division by 10^9 always fits.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

/// The CEL rule that accepts a quantity-valued string field.
pub(crate) const QUANTITY_RULE: &str = "isQuantity(self)";

/// Parses a Kubernetes quantity (`20Gi`, `500M`, `1.5Ti`, `1e9`) as a number
/// of bytes, rounding a fraction of a byte up as Kubernetes does.
pub fn parse_quantity_bytes(text: &str) -> Result<u128, String> {
    let bad = |why: &str| format!("{text:?} is not a size like 20Gi, 500M or 1.5Ti: {why}");
    let number_len = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_len);
    if number.is_empty() || number == "." {
        return Err(bad(if text.starts_with('-') {
            "it is negative"
        } else {
            "it must start with a number"
        }));
    }
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if frac.contains('.') {
        return Err(bad("it has two decimal points"));
    }
    // value = digits / 10^frac_len * multiplier, with the multiplier as num/den.
    let (mul_num, mul_den): (u128, u128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| bad("the exponent is not a whole number"))?;
            let pow = 10u128.checked_pow(exp.unsigned_abs()).ok_or_else(|| bad("it is too large"))?;
            if exp >= 0 { (pow, 1) } else { (1, pow) }
        }
        _ => return Err(bad("unknown suffix (use Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E)")),
    };
    let too_large = || bad("it is too large");
    let digits: u128 = format!("{int}{frac}").parse().map_err(|_| too_large())?;
    let frac_den =
        10u128.checked_pow(u32::try_from(frac.len()).map_err(|_| too_large())?).ok_or_else(too_large)?;
    let num = digits.checked_mul(mul_num).ok_or_else(too_large)?;
    let den = frac_den.checked_mul(mul_den).ok_or_else(too_large)?;
    let bytes = num.div_ceil(den);
    // Kubernetes caps every quantity at 2^63-1.
    if bytes > i64::MAX as u128 {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The schema pattern of a platform: `os/arch` or `os/arch/variant`.
pub const PLATFORM_PATTERN: &str = r"^[a-z0-9_]+/[a-z0-9_]+(/[a-z0-9_]+)?$";

/// An OCI platform as Kiln's resources name it (`linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]` in the lowercase form of [`PLATFORM_PATTERN`].
    pub fn parse(text: &str) -> Result<Self, String> {
        let word = |s: &str| {
            !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [os, arch] if word(os) && word(arch) => {
                Ok(Self { os: (*os).into(), architecture: (*arch).into(), variant: None })
            }
            [os, arch, variant] if word(os) && word(arch) && word(variant) => {
                Ok(Self { os: (*os).into(), architecture: (*arch).into(), variant: Some((*variant).into()) })
            }
            _ => Err(format!(
                "{text:?} is not a platform like linux/amd64 or linux/arm/v7 (lowercase os/arch[/variant])"
            )),
        }
    }

    /// The node labels that put a pod on a node of this platform. Nodes carry
    /// no standard label for the variant, so it plays no part.
    pub fn node_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("kubernetes.io/os".to_owned(), self.os.clone()),
            ("kubernetes.io/arch".to_owned(), self.architecture.clone()),
        ])
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Checks a list of platforms: each well formed, none twice.
pub(crate) fn check_platforms(field: &str, platforms: &[String], errors: &mut FieldErrors) {
    for (i, p) in platforms.iter().enumerate() {
        if let Err(e) = Platform::parse(p) {
            errors.push(format!("{field}[{i}]"), e);
        } else if platforms[..i].contains(p) {
            errors.push(format!("{field}[{i}]"), format!("{p} is listed twice"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_go_syntax() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3us").unwrap(), Duration::from_micros(3));
        assert_eq!(parse_duration("3µs").unwrap(), Duration::from_micros(3));
        assert_eq!(parse_duration("10m0s").unwrap(), Duration::from_secs(600));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        assert!(parse_duration("10").unwrap_err().contains("has no unit"));
        assert!(parse_duration("10d").unwrap_err().contains("unknown unit \"d\""));
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("-5m").unwrap_err().contains("starts with a number"));
        assert!(parse_duration("1.m").unwrap_err().contains("digits after"));
        assert!(
            parse_duration("99999999999999999999999999999999999999999h").unwrap_err().contains("too long")
        );
    }

    #[test]
    fn quantities_are_bytes() {
        assert_eq!(parse_quantity_bytes("20Gi").unwrap(), 20 << 30);
        assert_eq!(parse_quantity_bytes("500M").unwrap(), 500_000_000);
        assert_eq!(parse_quantity_bytes("1.5Ti").unwrap(), 3 << 39);
        assert_eq!(parse_quantity_bytes("1e9").unwrap(), 1_000_000_000);
        assert_eq!(parse_quantity_bytes("1E3").unwrap(), 1_000);
        assert_eq!(parse_quantity_bytes("12345").unwrap(), 12345);
        assert_eq!(parse_quantity_bytes("0.1Ki").unwrap(), 103, "102.4 rounds up");
        assert_eq!(parse_quantity_bytes("1500m").unwrap(), 2, "1.5 rounds up");
        assert_eq!(parse_quantity_bytes("0").unwrap(), 0);
    }

    #[test]
    fn bad_quantities_say_what_is_wrong() {
        assert!(parse_quantity_bytes("20GB").unwrap_err().contains("unknown suffix"));
        assert!(parse_quantity_bytes("Gi").unwrap_err().contains("start with a number"));
        assert!(parse_quantity_bytes("-1Gi").unwrap_err().contains("negative"));
        assert!(parse_quantity_bytes("1.2.3").unwrap_err().contains("two decimal points"));
        assert!(parse_quantity_bytes("9Ei").unwrap_err().contains("too large"));
        assert!(parse_quantity_bytes("1ex").unwrap_err().contains("exponent"));
    }

    #[test]
    fn platforms_parse_and_select_nodes() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_deref()),
            ("linux", "arm", Some("v7"))
        );
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert_eq!(
            Platform::parse("linux/amd64").unwrap().node_selector(),
            BTreeMap::from([
                ("kubernetes.io/os".to_owned(), "linux".to_owned()),
                ("kubernetes.io/arch".to_owned(), "amd64".to_owned())
            ])
        );
        for bad in ["linux", "Linux/amd64", "linux/amd64/v1/x", "linux//v7", "linux/amd64 "] {
            assert!(Platform::parse(bad).unwrap_err().contains("not a platform"), "{bad}");
        }
    }

    #[test]
    fn platform_lists_reject_duplicates() {
        let mut errors = FieldErrors(Vec::new());
        check_platforms(
            "spec.platforms",
            &["linux/amd64".into(), "linux/amd64".into(), "x".into()],
            &mut errors,
        );
        assert_eq!(
            errors.to_string(),
            "spec.platforms[1]: linux/amd64 is listed twice; \
             spec.platforms[2]: \"x\" is not a platform like linux/amd64 or linux/arm/v7 (lowercase os/arch[/variant])"
        );
    }
}
