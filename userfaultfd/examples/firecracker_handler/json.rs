//! Just enough JSON for Firecracker's region list: a complete JSON value parser (objects,
//! arrays, strings with escapes, numbers, `true`/`false`/`null`) that tells a truncated text
//! (more may arrive on the socket) from a malformed one. Integers are kept exactly as `u64`
//! when they are non-negative integers; other numbers are kept as text.

use std::collections::BTreeMap;

/// A JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A non-negative integer that fits in a `u64`.
    Unsigned(u64),
    /// Any other number, as written.
    OtherNumber(String),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object (a repeated key keeps its last value).
    Object(BTreeMap<String, Value>),
}

/// Why a text is not a JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// The text ends before the value does.
    Truncated,
    /// The text is not JSON: what was expected, and at which byte.
    Invalid {
        /// Byte offset.
        at: usize,
        /// What is wrong.
        what: &'static str,
    },
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JsonError::Truncated => f.write_str("the JSON text ends early"),
            JsonError::Invalid { at, what } => write!(f, "invalid JSON at byte {at}: {what}"),
        }
    }
}

/// Nesting deeper than this is refused (a hostile peer cannot exhaust the stack).
const MAX_DEPTH: usize = 64;

/// Parses `text` as one JSON value, with nothing but white space after it.
pub fn parse(text: &[u8]) -> Result<Value, JsonError> {
    let mut p = Parser { text, at: 0 };
    let value = p.value(0)?;
    p.skip_space();
    if p.at != text.len() {
        return Err(p.invalid("text after the value"));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn invalid(&self, what: &'static str) -> JsonError {
        JsonError::Invalid { at: self.at, what }
    }

    fn skip_space(&mut self) {
        while matches!(self.text.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Result<u8, JsonError> {
        self.skip_space();
        self.text.get(self.at).copied().ok_or(JsonError::Truncated)
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), JsonError> {
        if self.peek()? == byte {
            self.at += 1;
            Ok(())
        } else {
            Err(self.invalid(what))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.invalid("nesting too deep"));
        }
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string().map(Value::String),
            b't' => self.word(b"true", Value::Bool(true)),
            b'f' => self.word(b"false", Value::Bool(false)),
            b'n' => self.word(b"null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(self.invalid("expected a value")),
        }
    }

    fn word(&mut self, word: &[u8], value: Value) -> Result<Value, JsonError> {
        let rest = &self.text[self.at..];
        let n = rest.len().min(word.len());
        if rest[..n] != word[..n] {
            return Err(self.invalid("expected true, false or null"));
        }
        if n < word.len() {
            return Err(JsonError::Truncated);
        }
        self.at += word.len();
        Ok(value)
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.at += 1;
        let mut map = BTreeMap::new();
        if self.peek()? == b'}' {
            self.at += 1;
            return Ok(Value::Object(map));
        }
        loop {
            if self.peek()? != b'"' {
                return Err(self.invalid("expected a string key"));
            }
            let key = self.string()?;
            self.expect(b':', "expected ':' after a key")?;
            let value = self.value(depth + 1)?;
            map.insert(key, value);
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.invalid("expected ',' or '}' in an object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.at += 1;
        let mut items = Vec::new();
        if self.peek()? == b']' {
            self.at += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.invalid("expected ',' or ']' in an array")),
            }
        }
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.at += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            let byte = *self.text.get(self.at).ok_or(JsonError::Truncated)?;
            self.at += 1;
            match byte {
                b'"' => {
                    return String::from_utf8(out).map_err(|_| self.invalid("string is not UTF-8"))
                }
                b'\\' => {
                    let escape = *self.text.get(self.at).ok_or(JsonError::Truncated)?;
                    self.at += 1;
                    let ch = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.invalid("unknown escape in a string")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                0x00..=0x1f => return Err(self.invalid("control character in a string")),
                _ => out.push(byte),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .text
            .get(self.at..self.at + 4)
            .ok_or(JsonError::Truncated)?;
        let text = std::str::from_utf8(digits).map_err(|_| self.invalid("bad \\u escape"))?;
        let value = u32::from_str_radix(text, 16).map_err(|_| self.invalid("bad \\u escape"))?;
        self.at += 4;
        Ok(value)
    }

    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&first) {
            // A surrogate pair: \uD8xx\uDCxx.
            let rest = self
                .text
                .get(self.at..self.at + 2)
                .ok_or(JsonError::Truncated)?;
            if rest != b"\\u" {
                return Err(self.invalid("unpaired surrogate"));
            }
            self.at += 2;
            let second = self.hex4()?;
            if !(0xdc00..0xe000).contains(&second) {
                return Err(self.invalid("unpaired surrogate"));
            }
            0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| self.invalid("bad \\u escape"))
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.at;
        let digits = |p: &mut Self| {
            let from = p.at;
            while matches!(p.text.get(p.at), Some(b'0'..=b'9')) {
                p.at += 1;
            }
            p.at - from
        };
        if self.text[self.at] == b'-' {
            self.at += 1;
        }
        let int_start = self.at;
        if digits(self) == 0 {
            return self.number_end(start, "expected digits");
        }
        if self.text[int_start] == b'0' && self.at - int_start > 1 {
            return Err(self.invalid("leading zero in a number"));
        }
        let mut integer = self.text[start] != b'-';
        if self.text.get(self.at) == Some(&b'.') {
            integer = false;
            self.at += 1;
            if digits(self) == 0 {
                return self.number_end(start, "expected digits after '.'");
            }
        }
        if matches!(self.text.get(self.at), Some(b'e' | b'E')) {
            integer = false;
            self.at += 1;
            if matches!(self.text.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return self.number_end(start, "expected exponent digits");
            }
        }
        // A number at the very end of the text may continue in the next read.
        if self.at == self.text.len() {
            return Err(JsonError::Truncated);
        }
        let text = std::str::from_utf8(&self.text[start..self.at]).expect("ASCII");
        if integer {
            if let Ok(n) = text.parse::<u64>() {
                return Ok(Value::Unsigned(n));
            }
        }
        Ok(Value::OtherNumber(text.to_string()))
    }

    fn number_end(&self, _start: usize, what: &'static str) -> Result<Value, JsonError> {
        if self.at == self.text.len() {
            Err(JsonError::Truncated)
        } else {
            Err(self.invalid(what))
        }
    }
}
