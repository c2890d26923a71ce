//! A page of directory entries: those of one READDIR, at positions `offset..`, at most `max`
//! ("." is 0, ".." is 1). Every listing (`readdir.rs`, `metadata.rs`) fills one.

use super::{DirEntry, NodeType};

/// The first position after "." and "..".
const BASE: u64 = 2;

/// The entries of one READDIR: those at positions `offset..`, at most `max`.
pub(super) struct Page {
    pub(super) offset: u64,
    pub(super) max: usize,
    entries: Vec<DirEntry>,
}

impl Page {
    pub(super) const BASE: u64 = BASE;

    pub(super) fn new(offset: u64, max: usize) -> Page {
        Page {
            offset,
            max,
            entries: Vec::new(),
        }
    }

    /// How many more entries fit.
    pub(super) fn room(&self) -> usize {
        self.max.saturating_sub(self.entries.len())
    }

    /// The entries gathered.
    pub(super) fn into_entries(self) -> Vec<DirEntry> {
        self.entries
    }

    pub(super) fn push(&mut self, pos: u64, ino: u64, kind: NodeType, name: String) {
        if pos >= self.offset && self.entries.len() < self.max {
            self.entries.push(DirEntry {
                ino,
                next: pos + 1,
                kind,
                name,
            });
        }
    }

    /// Entries already cut to this page (their positions from `BASE` on).
    pub(super) fn append(&mut self, mut entries: Vec<DirEntry>) {
        entries.truncate(self.max.saturating_sub(self.entries.len()));
        self.entries.extend(entries);
    }

    /// `entries` at positions from `BASE` on.
    pub(super) fn extend(&mut self, entries: Vec<(u64, NodeType, String)>) {
        for (i, (ino, kind, name)) in entries.into_iter().enumerate() {
            self.push(BASE + i as u64, ino, kind, name);
        }
    }
}
