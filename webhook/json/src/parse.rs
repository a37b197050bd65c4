//! Parsing JSON text into a [`Value`] in one pass over the bytes: whitespace and strings
//! are scanned sixteen bytes at a time (eight without SSE2), every array and object is
//! allocated once, at its final size, and only strings with bytes beyond ASCII are checked
//! for UTF-8 (nothing else may hold one).
//!
//! The fast path accepts only what serde_json accepts and builds the same value; anything
//! it does not handle (malformed text, a lone surrogate, deep nesting) goes to serde_json,
//! which gives the value or exactly the error it always gave.

use crate::map::key_bit;
use crate::scan::{next_special, next_special_or_non_ascii, whitespace};
use crate::{Map, Number, Str, Value};
use std::cell::Cell;

/// Nesting deeper than this is left to serde_json (whose limit is 128).
const MAX_DEPTH: usize = 100;

/// Parse JSON text, as `serde_json::from_slice` would.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    from_slice_lazy(bytes, &[])
}

/// Parse JSON text as [`from_slice`] does, but keep each object that is the value of a
/// member named in `unread` (and is not `{}`) as its text, parsed when first read. The
/// text is checked now, so the result reads, compares and prints the same, and a
/// malformed document gives the same error: only the cost moves, for parts of a document
/// that are carried and seldom read.
pub fn from_slice_lazy(bytes: &[u8], unread: &[&str]) -> Result<Value, serde_json::Error> {
    match fast(bytes, unread) {
        Some(v) => Ok(v),
        None => serde_json::from_slice(bytes),
    }
}

/// Parse JSON text, as `serde_json::from_str` would.
pub fn from_str(text: &str) -> Result<Value, serde_json::Error> {
    match fast(text.as_bytes(), &[]) {
        Some(v) => Ok(v),
        None => serde_json::from_str(text),
    }
}

fn fast(bytes: &[u8], unread: &[&str]) -> Option<Value> {
    let scratch = SCRATCH
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut p = Parser {
        bytes,
        unread,
        unread_bits: unread.iter().fold(0, |bits, k| bits | key_bit(k)),
        at: 0,
        values: scratch.values,
        members: scratch.members,
        unescaped: scratch.unescaped,
    };
    let v = p.document();
    // A document that failed part way leaves what it had parsed on the stacks.
    p.values.clear();
    p.members.clear();
    let scratch = Scratch {
        values: p.values,
        members: p.members,
        unescaped: p.unescaped,
    };
    if scratch.bytes() <= KEEP {
        let _ = SCRATCH.try_with(|s| s.set(Some(scratch)));
    }
    v
}

/// The parser's stacks and string scratch, kept by each thread from one document to the
/// next: a server parses one review after another, and reusing them saves allocating (and
/// touching afresh) some 5 KB per document, and growing them.
struct Scratch {
    values: Vec<Value>,
    members: Vec<(Str, Value)>,
    unescaped: Vec<u8>,
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch {
            values: Vec::with_capacity(64),
            members: Vec::with_capacity(64),
            unescaped: Vec::new(),
        }
    }
}

impl Scratch {
    fn bytes(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<Value>()
            + self.members.capacity() * std::mem::size_of::<(Str, Value)>()
            + self.unescaped.capacity()
    }
}

/// Scratch larger than this (grown by a huge document) is freed rather than kept.
const KEEP: usize = 64 * 1024;

thread_local! {
    static SCRATCH: Cell<Option<Scratch>> = const { Cell::new(None) };
}

/// A member's value until it is parsed: the empty string, whose bytes are all zero, so it
/// is written as whole words (a null is one byte, which the next read of the member would
/// wait for).
const PLACEHOLDER: Value = Value::String(Str::new());

/// Where [`Parser::value`] puts what it parsed.
#[derive(Clone, Copy)]
enum Slot {
    /// On the value stack: an array's element, or the document.
    Element,
    /// The value of the member at this index of the member stack, pushed with its key.
    Member(usize),
}

struct Parser<'a> {
    /// The text, not yet known to be UTF-8: strings are checked as they are read.
    bytes: &'a [u8],
    /// Members whose object values are checked and kept as text ([`from_slice_lazy`]).
    unread: &'a [&'a str],
    /// Their [`key_bit`]s: a key whose bit is not among them is not one of them, which a
    /// parse without any (the usual case) learns from one test per member.
    unread_bits: u64,
    at: usize,
    /// Elements of the arrays being parsed, innermost last: each array takes its own off
    /// the end when it closes, into a vector of exactly its size.
    values: Vec<Value>,
    /// The same for the members of objects.
    members: Vec<(Str, Value)>,
    /// Scratch for strings with escapes.
    unescaped: Vec<u8>,
}

impl Parser<'_> {
    /// The whole text as one value, with nothing but whitespace around it.
    fn document(&mut self) -> Option<Value> {
        self.skip_ws();
        self.value(0, Slot::Element)?;
        self.skip_ws();
        (self.at == self.bytes.len()).then_some(())?;
        self.values.pop()
    }

    /// Store a parsed value where it goes: written once, in place. Returned by value, a
    /// value was written by parts into the callee's frame and read back whole at once,
    /// before those writes had landed, and the CPU stalled on each.
    #[inline(always)]
    fn put(&mut self, to: Slot, v: Value) -> Option<()> {
        match to {
            Slot::Element => self.values.push(v),
            Slot::Member(i) => self.members.get_mut(i)?.1 = v,
        }
        Some(())
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    #[inline(always)]
    fn skip_ws(&mut self) {
        // Compact JSON, as the API server sends it, has none: one test, in line.
        // Pretty-printed JSON has a newline and indentation, or one space after a colon.
        if self.bytes.get(self.at).is_some_and(|&c| c <= b' ') {
            self.at += whitespace(self.bytes, self.at);
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.at += 1)
    }

    /// Parse one value into `to`.
    fn value(&mut self, depth: usize, to: Slot) -> Option<()> {
        let v = match self.peek()? {
            b'{' => return self.object(depth + 1, to),
            b'[' => return self.array(depth + 1, to),
            b'"' => {
                return self.string(
                    #[inline(always)]
                    |p, s| p.put(to, Value::String(s)),
                );
            }
            b't' => self.literal("true", Value::Bool(true))?,
            b'f' => self.literal("false", Value::Bool(false))?,
            b'n' => self.literal("null", Value::Null)?,
            b'-' | b'0'..=b'9' => Value::Number(self.number()?),
            _ => return None,
        };
        self.put(to, v)
    }

    fn literal(&mut self, word: &str, v: Value) -> Option<Value> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word.as_bytes()).then(|| {
            self.at = end;
            v
        })
    }

    fn number(&mut self) -> Option<Number> {
        let start = self.at;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.peek() {
            self.at += 1;
        }
        let digits = self.bytes.get(start..self.at)?;
        // Plain non-negative integers, the common case, directly; the rest as serde_json
        // reads them (floats and negative zero have subtleties not worth repeating).
        if digits.len() <= 19
            && (digits[0] != b'0' || digits.len() == 1)
            && digits.iter().all(u8::is_ascii_digit)
        {
            let n = digits
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            return Some(n.into());
        }
        serde_json::from_slice(digits).ok()
    }

    /// A string, handed to `then` on each of the ways it is made, so that the common one
    /// (short, plain ASCII: built in registers) goes to its place from those registers.
    #[inline(always)]
    fn string<R>(&mut self, then: impl Fn(&mut Self, Str) -> Option<R>) -> Option<R> {
        self.at += 1; // the opening quote
        let start = self.at;
        let end = next_special_or_non_ascii(self.bytes, start);
        if self.bytes.get(end) == Some(&b'"') {
            self.at = end + 1;
            // SAFETY (both): the scan stops at the first byte beyond ASCII; this run has none.
            if let Some(s) = unsafe { Str::from_ascii_framed(self.bytes, start, end) } {
                return then(self, s);
            }
            let s = unsafe { Str::from_ascii(self.bytes, start, end) }?;
            return then(self, s);
        }
        let s = self.unescape(start, end)?;
        then(self, s)
    }

    /// A string with escapes or bytes beyond ASCII, from `start` (after the quote); `end`
    /// is the first such byte. The unescaped bytes are checked for UTF-8 once, at the end:
    /// an escape never ends or begins inside a character, so the whole is valid exactly
    /// when each run between escapes is.
    fn unescape(&mut self, start: usize, mut end: usize) -> Option<Str> {
        let mut out = std::mem::take(&mut self.unescaped);
        out.clear();
        let mut from = start;
        loop {
            end = next_special(self.bytes, end);
            out.extend_from_slice(self.bytes.get(from..end)?);
            match self.bytes.get(end)? {
                b'"' => {
                    self.at = end + 1;
                    let s = Str::from(std::str::from_utf8(&out).ok()?);
                    self.unescaped = out;
                    return Some(s);
                }
                b'\\' => {
                    let esc = *self.bytes.get(end + 1)?;
                    end += 2;
                    match esc {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(0x08),
                        b'f' => out.push(0x0c),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'u' => {
                            let c;
                            (c, end) = self.unicode(end)?;
                            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a control character
            }
            from = end;
        }
    }

    /// The character of a `\u` escape whose four hex digits start at `at` (a surrogate
    /// pair is two escapes), and where the text goes on after it.
    fn unicode(&self, at: usize) -> Option<(char, usize)> {
        let hi = self.hex4(at)?;
        let mut end = at + 4;
        let c = if (0xD800..0xDC00).contains(&hi) {
            if self.bytes.get(end..end + 2)? != b"\\u" {
                return None;
            }
            let lo = self.hex4(end + 2)?;
            if !(0xDC00..0xE000).contains(&lo) {
                return None;
            }
            end += 6;
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        Some((char::from_u32(c)?, end))
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let h = self.bytes.get(at..at + 4)?;
        h.iter()
            .try_fold(0u32, |n, &d| Some(n * 16 + char::from(d).to_digit(16)?))
    }

    fn array(&mut self, depth: usize, to: Slot) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.skip_ws();
        if self.eat(b']').is_some() {
            return self.put(to, Value::Array(Vec::new()));
        }
        let base = self.values.len();
        loop {
            self.skip_ws();
            self.value(depth, Slot::Element)?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    let elements = self.values.split_off(base);
                    return self.put(to, Value::Array(elements));
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, depth: usize, to: Slot) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.skip_ws();
        if self.eat(b'}').is_some() {
            return self.put(to, Value::Object(Map::new()));
        }
        let base = self.members.len();
        // Whether two keys may be the same: only then are they compared.
        let (mut seen, mut maybe_repeated) = (0u64, false);
        loop {
            self.skip_ws();
            if self.peek()? != b'"' {
                return None;
            }
            // The key goes on the stack first; its value is written next to it.
            let slot = self.members.len();
            let bit = self.string(
                #[inline(always)]
                |p, k| {
                    let bit = key_bit(&k);
                    p.members.push((k, PLACEHOLDER));
                    Some(bit)
                },
            )?;
            maybe_repeated |= seen & bit != 0;
            seen |= bit;
            self.skip_ws();
            self.eat(b':')?;
            self.skip_ws();
            if bit & self.unread_bits != 0 && self.keeps_unread(slot) {
                self.unread_object(depth, slot)?;
            } else {
                self.value(depth, Slot::Member(slot))?;
            }
            self.skip_ws();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    let map = Map::from_stack(&mut self.members, base, maybe_repeated);
                    return self.put(to, Value::Object(map));
                }
                _ => return None,
            }
        }
    }

    /// Whether the member at `slot` of the member stack has an object for a value (next in
    /// the text) that [`from_slice_lazy`] was asked to keep unread.
    #[inline(always)]
    fn keeps_unread(&self, slot: usize) -> bool {
        self.peek() == Some(b'{')
            && self
                .members
                .get(slot)
                .is_some_and(|(k, _)| self.unread.contains(&k.as_str()))
    }

    /// Check the object at `at` as [`Parser::object`] would parse it, and put it into the
    /// member at `slot` as its text.
    #[inline(never)]
    fn unread_object(&mut self, depth: usize, slot: usize) -> Option<()> {
        let start = self.at;
        self.skip(depth)?;
        let text = self.bytes.get(start..self.at)?;
        let map = if text == b"{}" {
            Map::new()
        } else {
            Map::unread(text)
        };
        self.put(Slot::Member(slot), Value::Object(map))
    }

    /// Check one value as [`Parser::value`] would parse it at `depth`, building nothing:
    /// what this accepts, the parser accepts, so an unread object parses when read.
    fn skip(&mut self, depth: usize) -> Option<()> {
        let close = match self.peek()? {
            b'{' => b'}',
            b'[' => b']',
            b'"' => return self.skip_string(),
            b't' => return self.literal("true", Value::Null).map(drop),
            b'f' => return self.literal("false", Value::Null).map(drop),
            b'n' => return self.literal("null", Value::Null).map(drop),
            b'-' | b'0'..=b'9' => return self.number().map(drop),
            _ => return None,
        };
        let depth = depth + 1;
        if depth > MAX_DEPTH {
            return None;
        }
        self.at += 1;
        self.skip_ws();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            self.skip_ws();
            if close == b'}' {
                if self.peek()? != b'"' {
                    return None;
                }
                self.skip_string()?;
                self.skip_ws();
                self.eat(b':')?;
                self.skip_ws();
            }
            self.skip(depth)?;
            self.skip_ws();
            match self.peek()? {
                b',' => self.at += 1,
                b if b == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Check a string as [`Parser::string`] would read it, building nothing. Each run
    /// between escapes must be UTF-8 (an escape never ends or begins inside a character,
    /// so the unescaped string is UTF-8 exactly when they all are).
    fn skip_string(&mut self) -> Option<()> {
        self.at += 1; // the opening quote
        let mut from = self.at;
        let mut end = next_special_or_non_ascii(self.bytes, from);
        loop {
            if self.bytes.get(end)? & 0x80 != 0 {
                // Beyond ASCII: the run up to the next special byte must be UTF-8.
                let stop = next_special(self.bytes, end);
                std::str::from_utf8(self.bytes.get(from..stop)?).ok()?;
                end = stop;
            }
            match self.bytes.get(end)? {
                b'"' => {
                    self.at = end + 1;
                    return Some(());
                }
                b'\\' => match *self.bytes.get(end + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => end += 2,
                    b'u' => (_, end) = self.unicode(end + 2)?,
                    _ => return None,
                },
                _ => return None, // a control character
            }
            from = end;
            end = next_special_or_non_ascii(self.bytes, from);
        }
    }
}
