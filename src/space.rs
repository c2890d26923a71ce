//! Disk space: what an archive will take, and whether the file system that receives it can give
//! that much. A conversion or concat knows the size of its output before it writes a byte, so
//! an input that declares more than the disk holds (a 64 KB file can declare 2^40 rows) is
//! refused up front instead of filling the store's file system for every other dataset on it.
//!
//! The rule: the output must fit in the file system's space available to unprivileged users
//! (statvfs `f_bavail`) less a reserve of 2 % of the file system's size, capped at 1 GiB, so
//! that what is left stays usable by the rest of the store (uploads, other conversions, logs).

use std::path::Path;

use crate::archive::IndexWidths;
use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// The reserve is 2 % of the file system, but never more than this.
pub const MAX_RESERVE: u64 = 1 << 30;

/// What an archive's files take beyond its arrays: metadata, header and feature index, per
/// feature (gene) and per file; generous, so that the estimate is an upper bound.
const BYTES_PER_FEATURE: u64 = 256;
const FIXED_OVERHEAD: u64 = 1 << 20;

/// The file system's free space and size, as statvfs reports them.
#[derive(Clone, Copy, Debug)]
pub struct FsSpace {
    /// Bytes available to unprivileged users.
    pub available: u64,
    /// Total bytes of the file system.
    pub total: u64,
}

impl FsSpace {
    /// The space of the file system that holds `dir`.
    pub fn of(dir: &Path) -> Result<FsSpace> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| Error::Usage(format!("{}: path contains NUL", dir.display())))?;
        // SAFETY: `c` is a valid NUL-terminated path and `st` a zeroed statvfs that the kernel
        // fills; both outlive the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(Error::io(dir, std::io::Error::last_os_error()));
        }
        let frsize = if st.f_frsize > 0 {
            st.f_frsize
        } else {
            st.f_bsize
        };
        Ok(FsSpace {
            available: (st.f_bavail as u64).saturating_mul(frsize as u64),
            total: (st.f_blocks as u64).saturating_mul(frsize as u64),
        })
    }

    /// The space kept free for everything else: 2 % of the file system, at most 1 GiB.
    pub fn reserve(&self) -> u64 {
        (self.total / 50).min(MAX_RESERVE)
    }

    /// What an output may take: the available space less the reserve.
    pub fn usable(&self) -> u64 {
        self.available.saturating_sub(self.reserve())
    }
}

/// An upper bound of the bytes an archive of `rows` rows, `nnz` values of `data`, index arrays
/// of `widths` and `features` features (over `blocks` feature blocks) takes on disk.
pub fn archive_bytes(
    rows: u64,
    nnz: u64,
    data: Dtype,
    widths: IndexWidths,
    features: u64,
    blocks: u64,
) -> u64 {
    let row_ptr = (rows as u128 + 1) * widths.row_ptr.size() as u128;
    let elements = nnz as u128 * (widths.col_ptr.size() + data.size()) as u128;
    let meta = features as u128 * BYTES_PER_FEATURE as u128
        + blocks as u128 * 4096
        + FIXED_OVERHEAD as u128;
    u64::try_from(row_ptr + elements + meta).unwrap_or(u64::MAX)
}

/// Refuses an output of `needed` bytes at `output` when its file system cannot take it (see the
/// module doc for the rule); the error names the bytes needed, available and reserved.
pub fn ensure_room(output: &Path, needed: u64) -> Result<()> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let space = FsSpace::of(dir)?;
    if needed > space.usable() {
        return Err(Error::NoSpace {
            path: output.to_path_buf(),
            needed,
            available: space.available,
            reserve: space.reserve(),
        });
    }
    Ok(())
}

/// Lowers this process's file-size limit (RLIMIT_FSIZE) to `bytes` and makes an over-long
/// write fail with EFBIG instead of killing the process with SIGXFSZ, so the error is reported
/// and the temporary directory removed. A second line of defence behind `ensure_room`, for
/// worker processes: it only ever lowers the limit.
pub fn cap_file_size(bytes: u64) -> Result<()> {
    // SAFETY: setting SIGXFSZ to SIG_IGN installs no handler code; getrlimit/setrlimit read and
    // write the rlimit structs on our stack.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_FSIZE, &mut cur) != 0 {
            return Err(Error::Usage(format!(
                "getrlimit(RLIMIT_FSIZE): {}",
                std::io::Error::last_os_error()
            )));
        }
        let want = bytes.min(cur.rlim_max);
        let lim = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        if want < cur.rlim_cur && libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
            return Err(Error::Usage(format!(
                "setrlimit(RLIMIT_FSIZE): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_two_percent_capped_at_one_gib() {
        let small = FsSpace {
            available: 10 << 20,
            total: 100 << 20,
        };
        assert_eq!(small.reserve(), (100 << 20) / 50);
        assert_eq!(small.usable(), (10 << 20) - (100 << 20) / 50);
        let big = FsSpace {
            available: 50 << 30,
            total: 1 << 40,
        };
        assert_eq!(big.reserve(), 1 << 30);
        let full = FsSpace {
            available: 1,
            total: 1 << 40,
        };
        assert_eq!(full.usable(), 0);
    }

    #[test]
    fn archive_bytes_counts_every_array_and_never_overflows() {
        let wide = IndexWidths::WIDE;
        let b = archive_bytes(10, 100, Dtype::F32, wide, 5, 1);
        assert!(b >= 11 * 8 + 100 * 8, "{b}");
        // Narrow indices (uint8 columns and row offsets) take less.
        let narrow = IndexWidths::for_shape(crate::archive::IndexDtypes::Narrow, 100, 5);
        let n = archive_bytes(10, 100, Dtype::F32, narrow, 5, 1);
        assert_eq!(b - n, 11 * 7 + 100 * 3);
        assert_eq!(
            archive_bytes(u64::MAX, u64::MAX, Dtype::F64, wide, 0, 1),
            u64::MAX
        );
        // 2^40 rows: 8 TiB of row_ptr alone.
        assert!(archive_bytes(1 << 40, 3, Dtype::F32, wide, 4, 1) > 8 << 40);
    }

    #[test]
    fn the_room_check_refuses_what_the_disk_cannot_hold() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        ensure_room(&out, 4096).unwrap();
        let err = ensure_room(&out, u64::MAX / 2).unwrap_err().to_string();
        assert!(err.contains("needs") && err.contains("available"), "{err}");
    }
}
