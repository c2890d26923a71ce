//! The one place that decides whether a name coming from a user (a dropped file, a `.control`
//! command, an entry found in the store) is a safe dataset name. Everything that turns a name
//! into a store path goes through `DatasetName`, so nothing can reach outside the store.

use std::fmt;

/// A validated dataset name: 1..=255 bytes of UTF-8, no `/`, no NUL or other control
/// characters, not starting with `.` (hidden names are the store's own), not ending in `.h5ad`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatasetName(String);

/// Why a name was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadName {
    pub name: String,
    pub reason: &'static str,
}

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid name {:?}: {}", self.name, self.reason)
    }
}

impl std::error::Error for BadName {}

pub const MAX_NAME_BYTES: usize = 255;

impl DatasetName {
    pub fn parse(name: &str) -> Result<DatasetName, BadName> {
        let bad = |reason| {
            Err(BadName {
                name: name.chars().take(80).collect(),
                reason,
            })
        };
        if name.is_empty() {
            return bad("empty");
        }
        // Room for the ".h5ad" suffix of the input, within the usual NAME_MAX.
        if name.len() + ".h5ad".len() > MAX_NAME_BYTES {
            return bad("longer than 250 bytes");
        }
        if name.contains('/') {
            return bad("contains '/'");
        }
        if name.chars().any(char::is_control) {
            return bad("contains a control character");
        }
        if name.starts_with('.') {
            return bad("starts with '.'");
        }
        if name.ends_with(".h5ad") {
            return bad("ends with .h5ad");
        }
        Ok(DatasetName(name.to_string()))
    }

    /// Parses the name of a dropped input file: `NAME.h5ad` with a valid NAME.
    pub fn from_input_file(file_name: &str) -> Result<DatasetName, BadName> {
        match file_name.strip_suffix(".h5ad") {
            Some(stem) => DatasetName::parse(stem),
            None => Err(BadName {
                name: file_name.chars().take(80).collect(),
                reason: "only NAME.h5ad files can be dropped",
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn input_file_name(&self) -> String {
        format!("{}.h5ad", self.0)
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["pbmc3k", "study 1", "a-b_c.v2", "ünïcode", &"x".repeat(250)] {
            assert!(DatasetName::parse(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_unsafe_names() {
        for n in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../etc",
            "/abs",
            "a\0b",
            "tab\there",
            "nl\n",
            "x.h5ad",
            &"x".repeat(251),
        ] {
            assert!(DatasetName::parse(n).is_err(), "{n:?} should be refused");
        }
    }

    #[test]
    fn input_files_need_the_suffix() {
        assert_eq!(
            DatasetName::from_input_file("pbmc.h5ad").unwrap().as_str(),
            "pbmc"
        );
        assert!(DatasetName::from_input_file("pbmc.txt").is_err());
        assert!(DatasetName::from_input_file(".x.h5ad").is_err());
        assert!(DatasetName::from_input_file("a.h5ad.h5ad").is_err());
    }
}
