//! JSON as Go's `encoding/json` writes it: compact, with `<`, `>`, `&`,
//! U+2028 and U+2029 escaped and `\u0008`/`\u000c` instead of `\b`/`\f`.
//! Source attrs (`local.followpaths`, …) and image configs are compared as
//! bytes downstream, so they must be spelled the way buildkitd spells them.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};

use super::LlbError;

struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        match escape {
            CharEscape::Backspace => writer.write_all(b"\\u0008"),
            CharEscape::FormFeed => writer.write_all(b"\\u000c"),
            other => CompactFormatter.write_char_escape(writer, other),
        }
    }
}

/// `value` encoded as Go's `json.Marshal` would.
pub(crate) fn go_json<T: Serialize + ?Sized>(value: &T, what: &'static str) -> Result<Vec<u8>, LlbError> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    value.serialize(&mut serializer).map_err(|e| LlbError::Json { what, reason: e.to_string() })?;
    Ok(out)
}

/// [`go_json`] as a string (JSON output is always UTF-8).
pub(crate) fn go_json_string<T: Serialize + ?Sized>(
    value: &T,
    what: &'static str,
) -> Result<String, LlbError> {
    let bytes = go_json(value, what)?;
    String::from_utf8(bytes).map_err(|e| LlbError::Json { what, reason: e.to_string() })
}
