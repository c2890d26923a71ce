//! An archive's `row_ptr` held in memory for readers that look up many scattered rows: a
//! shuffled batch of 256 rows needs 256 row-pointer pairs, each otherwise a read of its own
//! (a third of a warm batch's reads). Held only when the file is small and a process-wide
//! budget allows it, so that the daemon's memory stays bounded whatever the datasets; past
//! either limit, rows are looked up with reads as before.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest `row_ptr` held (2 M rows of u64, 4 M of u32).
pub const HELD_FILE_MAX: u64 = 16 << 20;
/// Bytes held over all archives of the process.
pub const HELD_TOTAL_MAX: usize = 64 << 20;

static HELD_TOTAL: AtomicUsize = AtomicUsize::new(0);

/// The bytes of one `row_ptr` file; their room in the budget is given back on drop.
pub struct HeldFile {
    bytes: Vec<u8>,
}

impl HeldFile {
    /// The whole of `file` (`len` bytes), when it is small enough and fits the budget; `None`
    /// otherwise, and when the read fails (the caller's own reads then report it).
    pub fn load(file: &File, len: u64) -> Option<HeldFile> {
        if len > HELD_FILE_MAX {
            return None;
        }
        let len = len as usize;
        let reserved = HELD_TOTAL
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held + len <= HELD_TOTAL_MAX).then_some(held + len)
            })
            .is_ok();
        if !reserved {
            return None;
        }
        let mut bytes = vec![0u8; len];
        if file.read_exact_at(&mut bytes, 0).is_err() {
            HELD_TOTAL.fetch_sub(len, Ordering::AcqRel);
            return None;
        }
        Some(HeldFile { bytes })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for HeldFile {
    fn drop(&mut self) {
        HELD_TOTAL.fetch_sub(self.bytes.len(), Ordering::AcqRel);
    }
}

/// Bytes held now, over the process.
#[cfg(test)]
fn held_total() -> usize {
    HELD_TOTAL.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_small_file_is_held_and_its_room_given_back() {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        let held = HeldFile::load(&f, 4096).expect("small enough");
        assert_eq!(held.bytes(), &[7u8; 4096][..]);
        assert!(held_total() >= 4096);
        assert!(HeldFile::load(&f, HELD_FILE_MAX + 1).is_none(), "too large");
        drop(held);
        // Other tests of this process may hold files too: only what this one held is gone.
        assert!(held_total() <= HELD_TOTAL_MAX);
    }
}
