//! A `nodepool.yaml` read with the line of every value, so that a setting the import cannot
//! carry is named by its path and line. Keys are taken one by one ([`Mapping::take`]); whatever
//! is left when a mapping is finished is reported, so no setting is dropped silently.

use std::collections::BTreeMap;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::notes::{Located, Notes};

/// One value of the file, where it is, and how to name it (`providers[0].pools[1].name`).
#[derive(Clone, Debug)]
pub struct Field {
    pub path: String,
    pub line: u32,
    pub node: Node,
}

#[derive(Clone, Debug)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Field>),
    Map(Mapping),
}

/// A mapping whose keys are taken as they are read.
#[derive(Clone, Debug)]
pub struct Mapping {
    entries: Vec<(String, Field, bool)>,
}

/// The file could not be read as YAML at all (nothing to import).
#[derive(Debug, thiserror::Error)]
#[error("not valid YAML: {0}")]
pub struct NotYaml(String);

/// Reads `text`; the top level is named by its keys alone (`providers[0]`, not `.providers[0]`).
pub fn parse(text: &str) -> Result<Field, NotYaml> {
    let raw: Spanned<Raw> = serde_saphyr::from_str(text).map_err(|e| NotYaml(first_line(&e.to_string())))?;
    Ok(Field::from_raw(String::new(), raw))
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_owned()
}

impl Located for Field {
    fn path(&self) -> &str {
        &self.path
    }

    fn line(&self) -> u32 {
        self.line
    }
}

impl Field {
    fn from_raw(path: String, raw: Spanned<Raw>) -> Field {
        let line = raw.referenced.line() as u32;
        let node = match raw.value {
            Raw::Null => Node::Null,
            Raw::Bool(b) => Node::Bool(b),
            Raw::Int(i) => Node::Int(i),
            Raw::Float(f) => Node::Float(f),
            Raw::Str(s) => Node::Str(s),
            Raw::Seq(items) => Node::List(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| Field::from_raw(format!("{path}[{i}]"), item))
                    .collect(),
            ),
            Raw::Map(entries) => {
                let entries = entries
                    .into_iter()
                    .map(|(key, value)| {
                        // A setting is where its key is: a block value starts on the next line.
                        let key_line = key.referenced.line() as u32;
                        let key = key.value.scalar_text().unwrap_or_else(|| "<complex key>".into());
                        let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                        let mut field = Field::from_raw(child, value);
                        field.line = key_line;
                        (key, field, false)
                    })
                    .collect();
                Node::Map(Mapping { entries })
            }
        };
        Field { path, line, node }
    }

    /// What kind of value this is, for messages.
    fn kind(&self) -> &'static str {
        match self.node {
            Node::Null => "nothing",
            Node::Bool(_) => "a boolean",
            Node::Int(_) => "an integer",
            Node::Float(_) => "a number",
            Node::Str(_) => "a string",
            Node::List(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }

    fn wrong(&self, notes: &mut Notes, wanted: &str) {
        notes.invalid(self, format!("expected {wanted}, found {}", self.kind()));
    }

    /// A scalar as text (Nodepool reads names and ids with `str()`); `None` for an empty value.
    pub fn text(&self, notes: &mut Notes) -> Option<String> {
        match &self.node {
            Node::Null => None,
            Node::Str(s) => Some(s.clone()),
            Node::Int(i) => Some(i.to_string()),
            Node::Float(f) => Some(f.to_string()),
            Node::Bool(b) => Some(b.to_string()),
            Node::List(_) | Node::Map(_) => {
                self.wrong(notes, "a string");
                None
            }
        }
    }

    pub fn int(&self, notes: &mut Notes) -> Option<i64> {
        match &self.node {
            Node::Null => None,
            Node::Int(i) => Some(*i),
            Node::Float(f) if f.fract() == 0.0 => Some(*f as i64),
            Node::Str(s) if s.trim().parse::<i64>().is_ok() => s.trim().parse().ok(),
            _ => {
                self.wrong(notes, "an integer");
                None
            }
        }
    }

    /// A whole number of at least zero.
    pub fn count(&self, notes: &mut Notes) -> Option<u64> {
        let value = self.int(notes)?;
        u64::try_from(value).map_err(|_| notes.invalid(self, format!("{value} is negative"))).ok()
    }

    pub fn number(&self, notes: &mut Notes) -> Option<f64> {
        match &self.node {
            Node::Null => None,
            Node::Int(i) => Some(*i as f64),
            Node::Float(f) => Some(*f),
            Node::Str(s) if s.trim().parse::<f64>().is_ok() => s.trim().parse().ok(),
            _ => {
                self.wrong(notes, "a number");
                None
            }
        }
    }

    /// A boolean as Nodepool's YAML 1.1 reader understands it (`yes`, `off`, ...).
    pub fn flag(&self, notes: &mut Notes) -> Option<bool> {
        match &self.node {
            Node::Null => None,
            Node::Bool(b) => Some(*b),
            Node::Str(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "y" => Some(true),
                "false" | "no" | "off" | "n" => Some(false),
                _ => {
                    self.wrong(notes, "a boolean");
                    None
                }
            },
            _ => {
                self.wrong(notes, "a boolean");
                None
            }
        }
    }

    pub fn mapping(self, notes: &mut Notes) -> Option<Mapping> {
        match self.node {
            Node::Map(mapping) => Some(mapping),
            Node::Null => None,
            _ => {
                self.wrong(notes, "a mapping");
                None
            }
        }
    }

    /// The items of a list (an empty value is an empty list).
    pub fn list(self, notes: &mut Notes) -> Vec<Field> {
        match self.node {
            Node::List(items) => items,
            Node::Null => Vec::new(),
            _ => {
                self.wrong(notes, "a list");
                Vec::new()
            }
        }
    }

    /// A list of strings, or (as Nodepool's static driver allows) one string of
    /// space-separated words.
    pub fn words(self, notes: &mut Notes) -> Vec<String> {
        match &self.node {
            Node::Str(s) => s.split_whitespace().map(str::to_owned).collect(),
            _ => self.list(notes).iter().filter_map(|item| item.text(notes)).collect(),
        }
    }

    /// A list of strings; a single string is a list of one.
    pub fn strings(self, notes: &mut Notes) -> Vec<String> {
        match &self.node {
            Node::Str(s) => vec![s.clone()],
            _ => self.list(notes).iter().filter_map(|item| item.text(notes)).collect(),
        }
    }

    /// A mapping of strings (tags, selectors, annotations).
    pub fn string_map(self, notes: &mut Notes) -> BTreeMap<String, String> {
        let Some(mut mapping) = self.mapping(notes) else { return BTreeMap::new() };
        let mut map = BTreeMap::new();
        for key in mapping.keys() {
            if let Some(value) = mapping.take(&key).and_then(|v| v.text(notes)) {
                map.insert(key, value);
            }
        }
        map
    }

    /// The value as JSON, as written (node attributes are free-form).
    pub fn json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.node {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::from(*i),
            Node::Float(f) => Value::from(*f),
            Node::Str(s) => Value::String(s.clone()),
            Node::List(items) => Value::Array(items.iter().map(Field::json).collect()),
            Node::Map(mapping) => Value::Object(
                mapping.entries.iter().map(|(key, field, _)| (key.clone(), field.json())).collect(),
            ),
        }
    }
}

impl Mapping {
    /// The value of `key`, marked as read. With a key written twice, the last one counts (as in
    /// Nodepool's YAML reader).
    pub fn take(&mut self, key: &str) -> Option<Field> {
        let mut found = None;
        for (name, field, taken) in self.entries.iter_mut().rev() {
            if name == key && !*taken {
                *taken = true;
                if found.is_none() {
                    found = Some(field.clone());
                }
            }
        }
        found
    }

    /// The keys not read yet, in file order.
    pub fn keys(&self) -> Vec<String> {
        self.entries.iter().filter(|(_, _, taken)| !taken).map(|(key, _, _)| key.clone()).collect()
    }

    /// Reports `key`, if set, as not carried, saying why.
    pub fn not_carried(&mut self, key: &str, why: &str, notes: &mut Notes) {
        if let Some(field) = self.take(key) {
            notes.not_carried(&field, why);
        }
    }

    /// Reports every key not read as not carried: nothing in nodepool-operator reads it.
    pub fn finish(self, notes: &mut Notes) {
        for (_, field, taken) in self.entries {
            if !taken {
                notes.not_carried(&field, "not a setting nodepool-operator has");
            }
        }
    }
}

/// The parse tree serde-saphyr fills, with the place of every value.
enum Raw {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

impl Raw {
    fn scalar_text(&self) -> Option<String> {
        match self {
            Raw::Str(s) => Some(s.clone()),
            Raw::Int(i) => Some(i.to_string()),
            Raw::Float(f) => Some(f.to_string()),
            Raw::Bool(b) => Some(b.to_string()),
            Raw::Null => Some("null".into()),
            Raw::Seq(_) | Raw::Map(_) => None,
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
        Ok(i64::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Raw, D::Error> {
        Raw::deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Raw>>()? {
            entries.push((key, map.next_value::<Spanned<Raw>>()?));
        }
        Ok(Raw::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_knows_its_path_and_line() {
        let text = "labels:\n  - name: a\n    min-ready: 2\nproviders:\n  - name: p\n    pools:\n      - name: main\n";
        let mut notes = Notes::default();
        let mut top = parse(text).unwrap().mapping(&mut notes).unwrap();
        let labels = top.take("labels").unwrap().list(&mut notes);
        let mut label = labels[0].clone().mapping(&mut notes).unwrap();
        label.take("name");
        let min_ready = label.take("min-ready").unwrap();
        assert_eq!((min_ready.path.as_str(), min_ready.line), ("labels[0].min-ready", 3));
        assert_eq!(min_ready.count(&mut notes), Some(2));
        label.finish(&mut notes);
        top.finish(&mut notes);
        let left: Vec<_> = notes.iter().map(|n| (n.path.as_str(), n.line)).collect();
        assert_eq!(left, [("providers", 4)], "the unread key is reported with its line");
    }

    #[test]
    fn yaml_1_1_booleans_and_space_separated_words() {
        let mut notes = Notes::default();
        let mut top = parse("a: yes\nb: 'x  y'\nc: [1, 2]\n").unwrap().mapping(&mut notes).unwrap();
        assert_eq!(top.take("a").unwrap().flag(&mut notes), Some(true));
        assert_eq!(top.take("b").unwrap().words(&mut notes), ["x", "y"]);
        assert_eq!(top.take("c").unwrap().words(&mut notes), ["1", "2"]);
        assert!(notes.is_empty());
    }

    #[test]
    fn a_wrong_type_is_a_note_not_a_crash() {
        let mut notes = Notes::default();
        let mut top = parse("max-servers: lots\n").unwrap().mapping(&mut notes).unwrap();
        assert_eq!(top.take("max-servers").unwrap().count(&mut notes), None);
        assert!(notes.iter().any(|n| n.path == "max-servers" && n.line == 1));
    }

    #[test]
    fn broken_yaml_is_an_error() {
        assert!(parse("a: [1, 2\n").is_err());
    }
}
