//! Where in the config file: the span-diagnostics engine of [`super::parse`]. It reads the
//! TOML document with spans ([`Cx`]: sections, `[[entries]]`, serde with the error's key),
//! turns byte offsets into lines and columns and spans into dotted key paths
//! (`sinks[1].secret_env`) and back, and renders every [`Problem`] at once.
//!
//! It knows no section of the schema; `mod.rs` says what the file means and reports through
//! [`Cx::problem`].

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue, ValueDeserializer};

/// One problem found in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the key or value concerned.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path (`sinks[1].secret_env`); empty for the whole file.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The message of [`super::ConfigError::Invalid`]: the file, then one problem a line.
pub(super) fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut s = format!(
        "invalid config file {} ({} problem{}):",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        // A component's message starts with the key it is about (`secret_env: …`), which the
        // key path already says: say it once.
        let last = p.key.rsplit(['.', ']']).next().unwrap_or_default();
        let message = p
            .message
            .strip_prefix(last)
            .and_then(|m| m.strip_prefix(": "))
            .filter(|_| !last.is_empty())
            .unwrap_or(&p.message);
        s.push_str(&format!(
            "\n  {}:{}:{}: {}{}{}",
            path.display(),
            p.line,
            p.column,
            p.key,
            if p.key.is_empty() { "" } else { ": " },
            message
        ));
    }
    s
}

/// Every float value in the document, with its dotted key path and span.
pub(super) fn find_floats(
    table: &DeTable<'_>,
    prefix: &str,
    out: &mut Vec<(String, Range<usize>)>,
) {
    for (k, v) in table.iter() {
        let key = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        find_floats_value(v, &key, out);
    }
}

fn find_floats_value(v: &Spanned<DeValue<'_>>, key: &str, out: &mut Vec<(String, Range<usize>)>) {
    match v.get_ref() {
        DeValue::Float(_) => out.push((key.to_string(), v.span())),
        DeValue::Table(t) => find_floats(t, key, out),
        DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                find_floats_value(e, &format!("{key}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Splits a table value into (the keys in `mine`, every other key), keeping spans.
pub(super) fn split_table<'i>(
    v: &Spanned<DeValue<'i>>,
    mine: &[&str],
) -> Option<(Spanned<DeValue<'i>>, Spanned<DeValue<'i>>)> {
    let DeValue::Table(t) = v.get_ref() else {
        return None;
    };
    let mut a: DeTable<'i> = DeTable::new();
    let mut b: DeTable<'i> = DeTable::new();
    for (k, val) in t.iter() {
        let key: Spanned<DeString<'i>> = k.clone();
        if mine.contains(&k.get_ref().as_ref()) {
            a.insert(key, val.clone());
        } else {
            b.insert(key, val.clone());
        }
    }
    Some((
        Spanned::new(v.span(), DeValue::Table(a)),
        Spanned::new(v.span(), DeValue::Table(b)),
    ))
}

/// A key path segment.
#[derive(Clone, Copy, Debug)]
pub(super) enum P<'a> {
    /// A key.
    K(&'a str),
    /// An array index.
    I(usize),
}

pub(super) fn render_path(path: &[P<'_>]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            P::K(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            P::I(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// 1-based line and column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before
        .get(line_start..)
        .map_or(1, |l| l.chars().count() + 1);
    (line, column)
}

/// The dotted path of the deepest key whose key or value contains `offset`. Standard tables'
/// spans cover only their `[header]`, so tables and arrays are always searched.
pub(super) fn path_at(table: &DeTable<'_>, offset: usize) -> Option<String> {
    for (k, v) in table.iter() {
        if k.span().contains(&offset) {
            return Some(k.get_ref().to_string());
        }
        let inner = match v.get_ref() {
            DeValue::Table(t) => path_at(t, offset).map(|p| format!(".{p}")),
            DeValue::Array(a) => a.iter().enumerate().find_map(|(i, e)| match e.get_ref() {
                DeValue::Table(t) => path_at(t, offset)
                    .map(|p| format!("[{i}].{p}"))
                    .or_else(|| e.span().contains(&offset).then(|| format!("[{i}]"))),
                _ => e.span().contains(&offset).then(|| format!("[{i}]")),
            }),
            _ => None,
        };
        if let Some(inner) = inner {
            return Some(format!("{}{inner}", k.get_ref()));
        }
        if v.span().contains(&offset) {
            return Some(k.get_ref().to_string());
        }
    }
    None
}

/// The span of the key (or, failing that, the value) at `path`.
pub(super) fn span_of(root: &DeTable<'_>, path: &[P<'_>]) -> Option<Range<usize>> {
    let mut table = root;
    let mut best: Option<Range<usize>> = None;
    let mut cur: Option<&Spanned<DeValue<'_>>> = None;
    for seg in path {
        match seg {
            P::K(k) => {
                if let Some(v) = cur {
                    match v.get_ref() {
                        DeValue::Table(t) => table = t,
                        _ => return best,
                    }
                }
                let Some((key, val)) = table.iter().find(|(key, _)| key.get_ref() == k) else {
                    return best;
                };
                best = Some(key.span());
                cur = Some(val);
            }
            P::I(i) => {
                let Some(v) = cur else { return best };
                let DeValue::Array(a) = v.get_ref() else {
                    return best;
                };
                let Some(e) = a.get(*i) else { return best };
                best = Some(e.span());
                cur = Some(e);
            }
        }
    }
    best
}

/// The validation context: the document with spans, the problems found so far, and what
/// relative paths and secrets resolve against.
pub(super) struct Cx<'a, 'r> {
    /// The file's text.
    pub(super) text: &'a str,
    /// The parsed document (`None` when it did not parse).
    pub(super) root: Option<&'r DeTable<'a>>,
    /// Every problem found so far.
    pub(super) problems: Vec<Problem>,
    /// The config file's directory.
    pub(super) base: PathBuf,
    /// Looks up an environment variable.
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Cx<'a, '_> {
    /// Records a problem at the key `path` (or the nearest part of it that exists).
    pub(super) fn problem(&mut self, path: &[P<'_>], message: impl Into<String>) {
        let (line, column) = self
            .root
            .and_then(|r| span_of(r, path))
            .map(|s| line_col(self.text, s.start))
            .unwrap_or((1, 1));
        self.problems.push(Problem {
            line,
            column,
            key: render_path(path),
            message: message.into(),
        });
    }

    /// Records a serde error at the key its span falls in (else at `fallback`).
    pub(super) fn de_error(&mut self, e: toml::de::Error, fallback: &[P<'_>]) {
        let (line, column, key) = match e.span() {
            Some(s) => {
                let (l, c) = line_col(self.text, s.start);
                let key = self
                    .root
                    .and_then(|r| path_at(r, s.start))
                    .unwrap_or_else(|| render_path(fallback));
                (l, c, key)
            }
            None => {
                let (l, c) = self
                    .root
                    .and_then(|r| span_of(r, fallback))
                    .map(|s| line_col(self.text, s.start))
                    .unwrap_or((1, 1));
                (l, c, render_path(fallback))
            }
        };
        self.problems.push(Problem {
            line,
            column,
            key,
            message: friendly(e.message()),
        });
    }

    /// Reads one `[section]`: `Some(default)` when absent, `None` when it failed to
    /// deserialise (the problem is recorded and its semantic checks are skipped).
    pub(super) fn section<T: DeserializeOwned + Default>(&mut self, name: &str) -> Option<T> {
        let Some(v) = self.root.and_then(|r| {
            r.iter()
                .find(|(k, _)| k.get_ref() == name)
                .map(|(_, v)| v.clone())
        }) else {
            return Some(T::default());
        };
        if !v.get_ref().is_table() {
            self.problem(
                &[P::K(name)],
                format!("must be a table: write it as [{name}]"),
            );
            return None;
        }
        match T::deserialize(ValueDeserializer::from(v)) {
            Ok(t) => Some(t),
            Err(e) => {
                self.de_error(e, &[P::K(name)]);
                None
            }
        }
    }

    /// The tables of `[[name]]` (a problem if `name` is something else).
    pub(super) fn entries(&mut self, name: &str) -> Vec<Spanned<DeValue<'a>>> {
        let Some(v) = self.root.and_then(|r| {
            r.iter()
                .find(|(k, _)| k.get_ref() == name)
                .map(|(_, v)| v.clone())
        }) else {
            return Vec::new();
        };
        match v.get_ref() {
            DeValue::Array(items) if items.iter().all(|i| i.get_ref().is_table()) => {
                items.iter().cloned().collect()
            }
            _ => {
                self.problem(
                    &[P::K(name)],
                    format!("must be an array of tables: write each entry as [[{name}]]"),
                );
                Vec::new()
            }
        }
    }

    /// Deserialises `v`, recording every error at its key: `None` if there was any.
    pub(super) fn de<T: DeserializeOwned>(
        &mut self,
        v: Spanned<DeValue<'a>>,
        at: &[P<'_>],
    ) -> Option<T> {
        match self.de_partial(v, at) {
            Some((t, bad)) if bad.is_empty() => Some(t),
            _ => None,
        }
    }

    /// Deserialises the table `v` as far as it can, so one pass reports every mistake in it:
    /// serde stops at the first error, so each error is recorded and the key it is about is
    /// left out before trying again. Returns what the remaining keys made (if anything) and the
    /// keys left out; a required key reported missing only because it was left out is not
    /// reported twice.
    pub(super) fn de_partial<T: DeserializeOwned>(
        &mut self,
        v: Spanned<DeValue<'a>>,
        at: &[P<'_>],
    ) -> Option<(T, Vec<String>)> {
        let span = v.span();
        let DeValue::Table(mut table) = v.into_inner() else {
            return None;
        };
        let mut bad: Vec<String> = Vec::new();
        // Each round removes a key, so this ends.
        loop {
            let value = Spanned::new(span.clone(), DeValue::Table(table.clone()));
            let e = match T::deserialize(ValueDeserializer::from(value)) {
                Ok(t) => return Some((t, bad)),
                Err(e) => e,
            };
            if bad
                .iter()
                .any(|k| e.message().contains(&format!("missing field `{k}`")))
            {
                return None;
            }
            let key = e
                .span()
                .and_then(|s| path_at(&table, s.start))
                .map(|p| p.split(['.', '[']).next().unwrap_or_default().to_string());
            self.de_error(e, at);
            let key = key.filter(|k| !k.is_empty())?;
            let mut kept: DeTable<'a> = DeTable::new();
            for (k, val) in table.iter() {
                if k.get_ref().as_ref() != key.as_str() {
                    kept.insert(k.clone(), val.clone());
                }
            }
            if kept.len() == table.len() {
                return None;
            }
            table = kept;
            bad.push(key);
        }
    }
}

/// The field names of a serde struct (`#[derive(Deserialize)]`, no `flatten`): the keys its
/// table accepts. Asks the type to deserialise itself from a deserializer that only records
/// the fields it is offered.
pub(super) fn struct_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    struct Fields<'f>(&'f mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("only records struct fields"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("only records struct fields"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// The key a component's validation message is about (`"secret_env: …"` → `secret_env`).
pub(super) fn problem_key<'k>(message: &str, keys: &[&'k str]) -> Option<&'k str> {
    keys.iter()
        .copied()
        .filter(|k| message.starts_with(k) || message.contains(&format!(" {k}")))
        .max_by_key(|k| k.len())
}

/// Makes serde's messages say what to write: decimals and durations are strings.
pub(super) fn friendly(msg: &str) -> String {
    let msg = msg.trim();
    if msg.starts_with("invalid type: floating point") || msg.starts_with("invalid type: integer") {
        return format!(
            "{msg}; write money, levels, fractions and durations as strings, e.g. \"0.8\" or \"10s\""
        );
    }
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message that starts with its own key says the key once; others are left whole.
    #[test]
    fn key_said_once() {
        let p = |key: &str, message: &str| Problem {
            line: 3,
            column: 1,
            key: key.into(),
            message: message.into(),
        };
        let out = render_problems(
            Path::new("c.toml"),
            &[
                p("sinks[2].secret_env", "secret_env: variable X is not set"),
                p("api.token_env", "variable Y is not set"),
                p("", "secret_env: whole-file message"),
            ],
        );
        assert!(
            out.contains("c.toml:3:1: sinks[2].secret_env: variable X is not set\n"),
            "{out}"
        );
        assert!(
            out.contains("c.toml:3:1: api.token_env: variable Y is not set\n"),
            "{out}"
        );
        assert!(
            out.ends_with("c.toml:3:1: secret_env: whole-file message"),
            "{out}"
        );
    }

    /// Lines and columns are 1-based and columns count characters, not bytes.
    #[test]
    fn line_col_counts_chars() {
        let text = "a = 1\nb = \"é\" x\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, text.find('x').unwrap_or(0)), (2, 9));
        assert_eq!(line_col(text, 10_000), (3, 1));
    }

    /// A key path renders as written and finds its key's span; an offset finds its key path.
    #[test]
    fn paths_and_spans_round_trip() {
        let text =
            "[[sinks]]\ntype = \"stdout\"\n\n[[sinks]]\ntype = \"webhook\"\nsecret_env = \"S\"\n";
        let root = DeTable::parse(text).map(|t| t.into_inner());
        let Ok(root) = root else { panic!("parses") };
        let path = [P::K("sinks"), P::I(1), P::K("secret_env")];
        assert_eq!(render_path(&path), "sinks[1].secret_env");
        let span = span_of(&root, &path).unwrap_or_default();
        assert_eq!(line_col(text, span.start), (6, 1));
        assert_eq!(
            path_at(&root, span.start).as_deref(),
            Some("sinks[1].secret_env")
        );
    }
}
