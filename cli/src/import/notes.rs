//! What the import says of the settings it did not carry as written, each with its path and line.

use serde::Serialize;

/// Where a setting is in the file (a read value knows it).
pub trait Located {
    fn path(&self) -> &str;
    fn line(&self) -> u32;
}

/// One setting the import did not carry as written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Note {
    /// Where in `nodepool.yaml`, e.g. `providers[1].pools[0].labels[2].fleet`.
    pub path: String,
    pub line: u32,
    pub kind: NoteKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoteKind {
    /// Nothing produced carries it; the message says what to do instead, if anything.
    NotCarried,
    /// Carried, but it means something a little different here, or was renamed.
    Changed,
    /// Not a custom resource: a Helm value or a flag of the operator or the bridge.
    Elsewhere,
    /// The value is not what Nodepool accepts either; skipped.
    Invalid,
}

impl NoteKind {
    fn as_str(self) -> &'static str {
        match self {
            NoteKind::NotCarried => "not carried",
            NoteKind::Changed => "changed",
            NoteKind::Elsewhere => "set elsewhere",
            NoteKind::Invalid => "invalid",
        }
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}: {}: {}", self.line, self.path, self.kind.as_str(), self.message)
    }
}

/// The notes of one import, in the order they were found.
#[derive(Debug, Default)]
pub struct Notes(Vec<Note>);

impl Notes {
    fn add(&mut self, at: &impl Located, kind: NoteKind, message: String) {
        self.0.push(Note { path: at.path().to_owned(), line: at.line(), kind, message });
    }

    pub fn not_carried(&mut self, at: &impl Located, why: impl Into<String>) {
        self.add(at, NoteKind::NotCarried, why.into());
    }

    pub fn changed(&mut self, at: &impl Located, how: impl Into<String>) {
        self.add(at, NoteKind::Changed, how.into());
    }

    pub fn elsewhere(&mut self, at: &impl Located, r#where: impl Into<String>) {
        self.add(at, NoteKind::Elsewhere, r#where.into());
    }

    pub fn invalid(&mut self, at: &impl Located, why: impl Into<String>) {
        self.add(at, NoteKind::Invalid, why.into());
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &Note> {
        self.0.iter()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(mut self) -> Vec<Note> {
        self.0.sort_by_key(|note| note.line);
        self.0
    }
}
