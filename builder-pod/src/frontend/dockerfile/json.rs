//! Just enough JSON for the exec form (`RUN ["a", "b"]`) and the JSON
//! syntax directive, with Go's `encoding/json` acceptance rules: strict
//! grammar, lone surrogates decoded as U+FFFD, numbers that overflow a
//! float64 rejected at decode time.

/// What `json.Unmarshal(text, &[]any)` makes of the exec form.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ExecForm {
    /// A valid array of strings only.
    Strings(Vec<String>),
    /// A valid array with an element that is not a string.
    NotStrings,
    /// Not a JSON array at all: the instruction falls back to shell form.
    Invalid,
}

/// A top-level value, or an element or field of a top-level container;
/// deeper values are only validated.
enum Value {
    Str(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
    Other,
}

/// Go's decoder refuses nesting deeper than this.
const MAX_DEPTH: usize = 10_000;

struct Reader<'a> {
    s: &'a [u8],
    text: &'a str,
    pos: usize,
    overflow: bool,
}

pub(crate) fn parse_exec_form(text: &str) -> ExecForm {
    match parse_document(text) {
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::Str(s) => out.push(s),
                    _ => return ExecForm::NotStrings,
                }
            }
            ExecForm::Strings(out)
        }
        _ => ExecForm::Invalid,
    }
}

/// The string value of `key` in a top-level JSON object (last one wins, as in
/// Go), if the text is a valid object.
pub(crate) fn object_string_field(text: &str, key: &str) -> Option<String> {
    match parse_document(text)? {
        Value::Object(fields) => match fields.into_iter().rev().find(|(k, _)| k == key)?.1 {
            Value::Str(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

fn parse_document(text: &str) -> Option<Value> {
    let mut r = Reader { s: text.as_bytes(), text, pos: 0, overflow: false };
    r.skip_ws();
    let value = r.value(true)?;
    r.skip_ws();
    if r.pos != r.s.len() || r.overflow {
        return None;
    }
    Some(value)
}

impl Reader<'_> {
    fn skip_ws(&mut self) {
        while matches!(self.s.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.s.get(self.pos) == Some(&b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// A value whose containers hold plain elements (`top` is true only for the document).
    fn value(&mut self, top: bool) -> Option<Value> {
        match self.s.get(self.pos)? {
            b'"' => self.string().map(Value::Str),
            b'[' if top => {
                self.pos += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.eat(b']') {
                    return Some(Value::Array(items));
                }
                loop {
                    self.skip_ws();
                    items.push(self.value(false)?);
                    self.skip_ws();
                    if self.eat(b']') {
                        return Some(Value::Array(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'{' if top => {
                self.pos += 1;
                let mut fields = Vec::new();
                self.skip_ws();
                if self.eat(b'}') {
                    return Some(Value::Object(fields));
                }
                loop {
                    self.skip_ws();
                    let key = self.key()?;
                    let value = self.value(false)?;
                    fields.push((key, value));
                    self.skip_ws();
                    if self.eat(b'}') {
                        return Some(Value::Object(fields));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            _ => self.skip_nested().map(|()| Value::Other),
        }
    }

    /// `"key" :` with the whitespace after the colon.
    fn key(&mut self) -> Option<String> {
        if self.s.get(self.pos) != Some(&b'"') {
            return None;
        }
        let key = self.string()?;
        self.skip_ws();
        if !self.eat(b':') {
            return None;
        }
        self.skip_ws();
        Some(key)
    }

    /// Validates one value of any depth without recursion, so hostile nesting
    /// cannot exhaust the stack.
    fn skip_nested(&mut self) -> Option<()> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            // Expecting a value.
            self.skip_ws();
            match *self.s.get(self.pos)? {
                b'"' => {
                    self.string()?;
                }
                c @ (b'[' | b'{') => {
                    self.pos += 1;
                    open.push(c);
                    // The document's own container counts towards Go's limit.
                    if open.len() + 1 > MAX_DEPTH {
                        return None;
                    }
                    self.skip_ws();
                    let close = if c == b'[' { b']' } else { b'}' };
                    if !self.eat(close) {
                        if c == b'{' {
                            self.key()?;
                        }
                        continue;
                    }
                    open.pop();
                }
                b't' => self.literal("true")?,
                b'f' => self.literal("false")?,
                b'n' => self.literal("null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return None,
            }
            // After a value: close containers or move to the next element.
            loop {
                let Some(&container) = open.last() else { return Some(()) };
                self.skip_ws();
                if self.eat(b',') {
                    if container == b'{' {
                        self.skip_ws();
                        self.key()?;
                    }
                    break;
                }
                let close = if container == b'[' { b']' } else { b'}' };
                if !self.eat(close) {
                    return None;
                }
                open.pop();
            }
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        if self.s[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Some(())
        } else {
            None
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.s.get(self.pos), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Option<()> {
        let start = self.pos;
        self.eat(b'-');
        if self.eat(b'0') {
            // A leading zero stands alone.
        } else if self.digits() == 0 {
            return None;
        }
        if self.eat(b'.') && self.digits() == 0 {
            return None;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return None;
            }
        }
        let literal = &self.text[start..self.pos];
        if literal.parse::<f64>().map_or(true, |f| f.is_infinite()) {
            self.overflow = true;
        }
        Some(())
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.pos..self.pos + 4)?;
        let v = u32::from_str_radix(digits, 16).ok()?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.pos += 4;
        Some(v)
    }

    fn string(&mut self) -> Option<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let rest = self.text.get(self.pos..)?;
            let c = rest.chars().next()?;
            match c {
                '"' => {
                    self.pos += 1;
                    return Some(out);
                }
                '\\' => {
                    self.pos += 1;
                    let e = *self.s.get(self.pos)?;
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let first = self.hex4()?;
                            out.push(self.surrogate_pair(first));
                        }
                        _ => return None,
                    }
                }
                c if (c as u32) < 0x20 => return None,
                c => {
                    out.push(c);
                    self.pos += c.len_utf8();
                }
            }
        }
    }

    /// Combines a high surrogate with a following `\uDC00..` escape; anything
    /// unpaired becomes U+FFFD, as Go's decoder does.
    fn surrogate_pair(&mut self, first: u32) -> char {
        if (0xd800..0xdc00).contains(&first) && self.s[self.pos..].starts_with(b"\\u") {
            let save = self.pos;
            self.pos += 2;
            if let Some(second) = self.hex4()
                && (0xdc00..0xe000).contains(&second)
            {
                let c = 0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00);
                return char::from_u32(c).unwrap_or('\u{fffd}');
            }
            self.pos = save;
        }
        char::from_u32(first).unwrap_or('\u{fffd}')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> ExecForm {
        ExecForm::Strings(v.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn exec_form_acceptance_matches_go() {
        let cases = [
            (r#"["a", "b c"]"#, strings(&["a", "b c"])),
            (r#"[]"#, strings(&[])),
            (" [ \"x\" ] \n", strings(&["x"])),
            (r#"["\u00e9\n\t\"\\\/"]"#, strings(&["é\n\t\"\\/"])),
            (r#"["\ud83d\ude00", "\ud800"]"#, strings(&["😀", "\u{fffd}"])),
            (r#"["a", 1]"#, ExecForm::NotStrings),
            (r#"["a", null]"#, ExecForm::NotStrings),
            (r#"["a", ["b"]]"#, ExecForm::NotStrings),
            (r#"["a", {"b": "c"}]"#, ExecForm::NotStrings),
            // Overflowing numbers fail to decode in Go, so this is shell form.
            (r#"["a", 1e400]"#, ExecForm::Invalid),
            (r#"["a",]"#, ExecForm::Invalid),
            (r#"['a']"#, ExecForm::Invalid),
            (r#"["a"] x"#, ExecForm::Invalid),
            (r#"["a"#, ExecForm::Invalid),
            ("[\"a\tb\"]", ExecForm::Invalid),
            (r#"["\x"]"#, ExecForm::Invalid),
            (r#"[01]"#, ExecForm::Invalid),
            (r#"[-]"#, ExecForm::Invalid),
            (r#"[1.]"#, ExecForm::Invalid),
            (r#"{"a": "b"}"#, ExecForm::Invalid),
        ];
        for (input, want) in cases {
            assert_eq!(parse_exec_form(input), want, "{input}");
        }
    }

    #[test]
    fn object_fields() {
        assert_eq!(object_string_field(r#"{"syntax": "a", "syntax": "b"}"#, "syntax").as_deref(), Some("b"));
        assert_eq!(object_string_field(r#"{"syntax": 1}"#, "syntax"), None);
        assert_eq!(object_string_field(r#"{"x": "a"}"#, "syntax"), None);
        assert_eq!(object_string_field(r#"["syntax"]"#, "syntax"), None);
        assert_eq!(parse_exec_form(&"[".repeat(20_000)), ExecForm::Invalid);
    }
}
