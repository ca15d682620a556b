//! Instruction flags (`instructions/bflag.go`): `--name=value`, booleans,
//! repeated string flags, and upstream's errors for anything else.

use super::errors::{InstructionErrorKind, suggestion};

/// The flags an instruction accepts, parsed as `BFlags.Parse` does.
pub(super) struct Flags<'a> {
    given: &'a [String],
    defs: Vec<(&'static str, FlagKind)>,
    values: Vec<FlagValue>,
    pub(super) used: Vec<&'static str>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FlagKind {
    Bool,
    Str,
    Strings,
}

#[derive(Clone, Default)]
struct FlagValue {
    value: Option<String>,
    values: Vec<String>,
}

impl<'a> Flags<'a> {
    pub(super) fn new(given: &'a [String], defs: &[(&'static str, FlagKind)]) -> Self {
        Self { given, defs: defs.to_vec(), values: vec![FlagValue::default(); defs.len()], used: Vec::new() }
    }

    pub(super) fn parse(&mut self) -> Result<(), InstructionErrorKind> {
        for arg in self.given {
            if arg == "--" {
                return Ok(());
            }
            let Some(stripped) = arg.strip_prefix("--") else {
                return Err(InstructionErrorKind::FlagNotDashed(arg.clone()));
            };
            let (name, value) = match stripped.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (stripped, None),
            };
            let flag_name = format!("--{name}");
            let Some(index) = self.defs.iter().position(|(n, _)| *n == name) else {
                let names: Vec<&str> = self.defs.iter().map(|(n, _)| *n).collect();
                return Err(InstructionErrorKind::UnknownFlag {
                    flag: flag_name,
                    suggestion: suggestion(name, &names, true),
                });
            };
            let (def_name, kind) = self.defs[index];
            if self.used.contains(&def_name) && kind != FlagKind::Strings {
                return Err(InstructionErrorKind::DuplicateFlag(flag_name));
            }
            if !self.used.contains(&def_name) {
                self.used.push(def_name);
            }
            let slot = &mut self.values[index];
            match (kind, value) {
                (FlagKind::Bool, Some("")) => return Err(InstructionErrorKind::MissingFlagValue(flag_name)),
                (FlagKind::Bool, v) => {
                    let v = v.unwrap_or("");
                    slot.value = Some(
                        match v.to_lowercase().as_str() {
                            "true" | "" => "true",
                            "false" => "false",
                            _ => {
                                return Err(InstructionErrorKind::NotBoolean {
                                    flag: flag_name,
                                    value: v.to_owned(),
                                });
                            }
                        }
                        .to_owned(),
                    );
                }
                (_, None) => return Err(InstructionErrorKind::MissingFlagValue(flag_name)),
                (FlagKind::Str, Some(v)) => slot.value = Some(v.to_owned()),
                (FlagKind::Strings, Some(v)) => slot.values.push(v.to_owned()),
            }
        }
        Ok(())
    }

    fn index(&self, name: &str) -> usize {
        self.defs.iter().position(|(n, _)| *n == name).unwrap_or(usize::MAX)
    }

    pub(super) fn string(&self, name: &str) -> String {
        self.values.get(self.index(name)).and_then(|v| v.value.clone()).unwrap_or_default()
    }

    pub(super) fn strings(&self, name: &str) -> Vec<String> {
        self.values.get(self.index(name)).map(|v| v.values.clone()).unwrap_or_default()
    }

    /// A bool flag's value if it was given.
    pub(super) fn bool_given(&self, name: &str) -> Option<bool> {
        self.values.get(self.index(name)).and_then(|v| v.value.as_deref()).map(|v| v == "true")
    }

    pub(super) fn is_true(&self, name: &str) -> bool {
        self.bool_given(name).unwrap_or(false)
    }
}
