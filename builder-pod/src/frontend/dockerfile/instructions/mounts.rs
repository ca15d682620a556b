//! RUN's CSV-valued flags (`instructions/commands_runmount.go`,
//! `commands_rundevice.go`): `--mount` with every type and option, and
//! `--device`.

use std::fmt;

use super::commands::{Device, RunCommand};
use super::errors::{InstructionErrorKind, suggestion};
use crate::frontend::dockerfile::shell::ShellError;
use crate::util::strconv;

const MOUNT_TYPES: [&str; 5] = ["bind", "cache", "tmpfs", "secret", "ssh"];

const SHARING_MODES: [&str; 3] = ["shared", "private", "locked"];

const MOUNT_KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

impl fmt::Display for MountType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShareMode {
    Shared,
    Private,
    Locked,
}

/// A parsed `--mount` of RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub mount_type: MountType,
    pub from: String,
    pub source: String,
    pub target: String,
    /// Explicit `ro`/`rw`, or the type's default (cache and tmpfs are writable).
    pub read_only: bool,
    /// tmpfs `size`, in bytes (0 when unset).
    pub size_limit: i64,
    /// `id` (cache id, or secret/ssh id).
    pub cache_id: String,
    pub cache_sharing: Option<ShareMode>,
    pub required: bool,
    /// Secret `env`: the variable to expose the secret as.
    pub env: Option<String>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl RunCommand {
    /// Parses the `--mount` flags, expanding each option value with `expand`
    /// (BuildKit expands them with the stage's variables before parsing).
    pub(crate) fn mounts(&self, expand: Expander<'_>) -> Result<Vec<Mount>, InstructionErrorKind> {
        self.mount_specs.iter().map(|spec| parse_mount(spec, Some(&mut *expand))).collect()
    }
}

/// Expands one word with the build's variables (usually `Lexer::process_word`).
pub(crate) type Expander<'a> = &'a mut dyn FnMut(&str) -> Result<String, ShellError>;

/// Parses one `--mount` value (`parseMount`). Without `expand` only what
/// upstream checks at parse time is checked: the CSV syntax and that `from`
/// uses no variables.
pub(crate) fn parse_mount(
    spec: &str,
    mut expand: Option<Expander<'_>>,
) -> Result<Mount, InstructionErrorKind> {
    let fields = csv_fields(spec).map_err(InstructionErrorKind::MountCsv)?;
    let mut m = Mount {
        mount_type: MountType::Bind,
        from: String::new(),
        source: String::new(),
        target: String::new(),
        read_only: false,
        size_limit: 0,
        cache_id: String::new(),
        cache_sharing: None,
        required: false,
        env: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut ro_auto = true;
    let secret_or_ssh = |m: &Mount| matches!(m.mount_type, MountType::Secret | MountType::Ssh);
    let unexpected_for_type = |key: &str, m: &Mount| InstructionErrorKind::KeyNotForMountType {
        key: key.to_owned(),
        mount_type: m.mount_type,
    };

    for field in &fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_lowercase(), Some(v)),
            None => (field.to_lowercase(), None),
        };
        let Some(value) = value else {
            if expand.is_none() {
                continue;
            }
            match key.as_str() {
                "readonly" | "ro" => (m.read_only, ro_auto) = (true, false),
                "readwrite" | "rw" => (m.read_only, ro_auto) = (false, false),
                "required" if secret_or_ssh(&m) => m.required = true,
                "required" => return Err(unexpected_for_type(&key, &m)),
                _ => return Err(InstructionErrorKind::NotKeyValue(field.clone())),
            }
            continue;
        };
        let value = match expand.as_mut() {
            Some(expand) => expand(value).map_err(InstructionErrorKind::Expand)?,
            None if key == "from" => {
                if value.find('$').is_some_and(|i| i != value.len() - 1) {
                    return Err(InstructionErrorKind::MountFromVariable(key));
                }
                value.to_owned()
            }
            // Evaluated once the variables are known.
            None => continue,
        };
        let invalid = || InstructionErrorKind::InvalidValue { key: key.clone(), value: value.clone() };
        match key.as_str() {
            "type" => {
                m.mount_type = match value.to_lowercase().as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => MountType::Ssh,
                    _ => {
                        return Err(InstructionErrorKind::UnsupportedMountType {
                            suggestion: suggestion(&value, &MOUNT_TYPES, true),
                            value,
                        });
                    }
                }
            }
            "from" => m.from = value,
            "source" | "src" => m.source = value,
            "target" | "dst" | "destination" => m.target = value,
            "readonly" | "ro" => {
                m.read_only = strconv::parse_bool(&value).map_err(|_| invalid())?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.read_only = !strconv::parse_bool(&value).map_err(|_| invalid())?;
                ro_auto = false;
            }
            "required" if secret_or_ssh(&m) => {
                m.required = strconv::parse_bool(&value).map_err(|_| invalid())?
            }
            "required" => return Err(unexpected_for_type(&key, &m)),
            "size" if m.mount_type == MountType::Tmpfs => {
                m.size_limit = ram_in_bytes(&value).ok_or_else(invalid)?
            }
            "size" => return Err(unexpected_for_type(&key, &m)),
            "id" => m.cache_id = value,
            "sharing" => {
                m.cache_sharing = Some(match value.to_lowercase().as_str() {
                    "shared" => ShareMode::Shared,
                    "private" => ShareMode::Private,
                    "locked" => ShareMode::Locked,
                    _ => {
                        return Err(InstructionErrorKind::UnsupportedSharing {
                            suggestion: suggestion(&value, &SHARING_MODES, true),
                            value,
                        });
                    }
                })
            }
            "mode" => {
                m.mode = Some(
                    parse_u32(&value, 8).ok_or(InstructionErrorKind::InvalidNumber { key: "mode", value })?,
                )
            }
            "uid" => {
                m.uid = Some(
                    parse_u32(&value, 10).ok_or(InstructionErrorKind::InvalidNumber { key: "uid", value })?,
                )
            }
            "gid" => {
                m.gid = Some(
                    parse_u32(&value, 10).ok_or(InstructionErrorKind::InvalidNumber { key: "gid", value })?,
                )
            }
            "env" => m.env = Some(value),
            _ => {
                return Err(InstructionErrorKind::UnexpectedKey {
                    suggestion: suggestion(&key, &MOUNT_KEYS, true),
                    key,
                    field: field.clone(),
                });
            }
        }
    }

    if !matches!(m.mount_type, MountType::Secret | MountType::Ssh | MountType::Cache) {
        for (what, set) in [("mode", m.mode.is_some()), ("uid", m.uid.is_some()), ("gid", m.gid.is_some())] {
            if set {
                return Err(InstructionErrorKind::FileInfoNotAllowed { what, mount_type: m.mount_type });
            }
        }
    }
    if ro_auto {
        m.read_only = !matches!(m.mount_type, MountType::Cache | MountType::Tmpfs);
    }
    if m.mount_type == MountType::Secret {
        if !m.from.is_empty() {
            return Err(InstructionErrorKind::SecretMountFrom);
        }
        if m.cache_sharing.is_some() {
            return Err(InstructionErrorKind::SecretMountSharing);
        }
        if m.source.is_empty() && m.target.is_empty() && m.cache_id.is_empty() {
            return Err(InstructionErrorKind::SecretMountTarget);
        }
        if !m.source.is_empty() && !m.cache_id.is_empty() {
            return Err(InstructionErrorKind::SecretMountSourceAndId);
        }
    }
    if m.cache_sharing.is_some() && m.mount_type != MountType::Cache {
        return Err(InstructionErrorKind::SharingNotCache(m.mount_type));
    }
    Ok(m)
}

/// A `--device` value: `name[,required[=bool]]` or `name=…,required=…`.
pub(super) fn parse_device(spec: &str) -> Result<Device, InstructionErrorKind> {
    let fields = csv_fields(spec).map_err(InstructionErrorKind::DeviceCsv)?;
    let mut device = Device { name: String::new(), required: false };
    for field in &fields {
        let Some((key, value)) = field.split_once('=') else {
            if field.to_lowercase() == "required" {
                device.required = true;
            } else if device.name.is_empty() {
                device.name = field.clone();
            } else {
                return Err(InstructionErrorKind::NotKeyValue(field.clone()));
            }
            continue;
        };
        let key = key.to_lowercase();
        match key.as_str() {
            "name" if !device.name.is_empty() => {
                return Err(InstructionErrorKind::DeviceNameSet(device.name));
            }
            "name" => device.name = value.to_owned(),
            "required" => {
                device.required = strconv::parse_bool(value)
                    .map_err(|_| InstructionErrorKind::InvalidValue { key, value: value.to_owned() })?;
            }
            _ if device.name.is_empty() => device.name = field.clone(),
            _ => {
                return Err(InstructionErrorKind::UnexpectedKey {
                    suggestion: suggestion(&key, &["name", "required"], true),
                    key,
                    field: field.clone(),
                });
            }
        }
    }
    Ok(device)
}

/// One CSV record as `tonistiigi/go-csvvalue` reads it; the error is Go's
/// `csv.ParseError` text.
pub(super) fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let line = line.strip_suffix("\r\n").or_else(|| line.strip_suffix('\n')).unwrap_or(line);
    if line.is_empty() {
        return Err("EOF".to_owned());
    }
    let err = |pos: usize, what: &str| format!("parse error on line 1, column {}: {what}", pos + 1);
    let bare = "bare \" in non-quoted-field";
    let extraneous = "extraneous or missing \" in quoted-field";
    let mut fields = Vec::new();
    let mut rest = line;
    let mut pos = 0;
    loop {
        if !rest.starts_with('"') {
            let field = rest.split(',').next().unwrap_or_default();
            if let Some(j) = field.find('"') {
                return Err(err(pos + j, bare));
            }
            fields.push(field.to_owned());
            if field.len() == rest.len() {
                return Ok(fields);
            }
            rest = &rest[field.len() + 1..];
            pos += field.len() + 1;
            continue;
        }
        rest = &rest[1..];
        pos += 1;
        let mut field = String::new();
        loop {
            let Some(i) = rest.find('"') else { return Err(err(pos, extraneous)) };
            field.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            pos += i + 1;
            if let Some(after) = rest.strip_prefix('"') {
                field.push('"');
                rest = after;
                pos += 1;
            } else if let Some(after) = rest.strip_prefix(',') {
                fields.push(std::mem::take(&mut field));
                rest = after;
                pos += 1;
                break;
            } else if rest.is_empty() {
                fields.push(field);
                return Ok(fields);
            } else {
                return Err(err(pos - 1, extraneous));
            }
        }
    }
}

/// `strconv.ParseUint(s, radix, 32)`, as upstream reads a mount's mode and ids.
fn parse_u32(s: &str, radix: u32) -> Option<u32> {
    strconv::parse_uint(s, radix, 32).ok().and_then(|n| u32::try_from(n).ok())
}

/// go-units `RAMInBytes`: a number with an optional binary suffix
/// (`64m`, `1.5GiB`, `512 kb`).
pub(super) fn ram_in_bytes(size: &str) -> Option<i64> {
    let sep = size.rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')?;
    let (num, suffix) = if size.as_bytes()[sep] == b' ' {
        (&size[..sep], &size[sep + 1..])
    } else {
        (&size[..=sep], &size[sep + 1..])
    };
    let number: f64 = num.parse().ok()?;
    if number < 0.0 {
        return None;
    }
    let suffix = suffix.to_lowercase();
    let multiplier: f64 = match suffix.as_str() {
        "" | "b" => 1.0,
        _ => {
            let exponent = match suffix.as_bytes()[0] {
                b'k' => 1,
                b'm' => 2,
                b'g' => 3,
                b't' => 4,
                b'p' => 5,
                _ => return None,
            };
            if !matches!(&suffix[1..], "" | "b" | "ib") {
                return None;
            }
            1024f64.powi(exponent)
        }
    };
    Some((number * multiplier) as i64)
}
