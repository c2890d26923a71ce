//! The mount(8) helper: `mount -t fuse.scdl-fs STORE MNT -o OPTS` and fstab lines reach the
//! binary as `mount.fuse.scdl-fs STORE MNT -o OPTS` (a symlink named so) or, through fuse3's
//! `mount.fuse3`, as `scdl-fs STORE MNT -o OPTS`. This module turns those arguments into the
//! `scdl-fs mount` arguments; options meant for mount(8) itself are ignored.

use std::ffi::OsString;

/// Exit code of an unparseable helper invocation or option (README lists the codes).
pub const EXIT_BAD_OPTION: u8 = 6;

/// Options mount(8) and systemd pass along that concern them, not us.
fn ignored(opt: &str) -> bool {
    matches!(
        opt,
        "_netdev"
            | "nofail"
            | "auto"
            | "noauto"
            | "rw"
            | "defaults"
            | "default_permissions"
            | "dev"
            | "nodev"
            | "suid"
            | "nosuid"
            | "exec"
            | "noexec"
            | "user"
            | "users"
            | "nouser"
            | "atime"
            | "noatime"
            | "relatime"
            | "strictatime"
            | "async"
            | "sync"
    ) || opt.starts_with("x-")
        || opt.starts_with("comment=")
}

/// Whether argv looks like a helper invocation: named mount.fuse.scdl-fs / mount.scdl-fs, or
/// `scdl-fs STORE MNT -o ...` where STORE is not a subcommand.
pub fn is_helper_invocation(args: &[OsString]) -> bool {
    let name = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.starts_with("mount.") {
        return true;
    }
    let subcommands = [
        "mount",
        "convert",
        "concat",
        "info",
        "convert-worker",
        "help",
    ];
    args.len() >= 3
        && !args[1].to_string_lossy().starts_with('-')
        && !subcommands.contains(&args[1].to_string_lossy().as_ref())
        && args.iter().any(|a| a == "-o")
}

/// Translates helper arguments (without argv[0]) into `scdl-fs mount` arguments.
pub fn mount_args(args: &[OsString]) -> Result<Vec<OsString>, String> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_string_lossy().as_ref() {
            "-o" => {
                let o = it.next().ok_or("-o needs a value")?;
                options.extend(
                    o.to_string_lossy()
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                );
            }
            // Flags mount(8) may add: -n (no mtab), -s (sloppy), -v (verbose), -f (fake).
            "-n" | "-s" | "-v" => {}
            "-f" => return Err("-f (fake mount) is not supported".into()),
            s if s.starts_with('-') => return Err(format!("unknown flag '{s}'")),
            _ => positional.push(a.clone()),
        }
    }
    let [store, mnt] = positional.as_slice() else {
        return Err(format!(
            "expected STORE MOUNTPOINT, got {} positional arguments",
            positional.len()
        ));
    };
    let mut out: Vec<OsString> = vec!["mount".into(), mnt.clone(), "--store".into(), store.clone()];
    for opt in options {
        if ignored(&opt) {
            continue;
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt.as_str(), None),
        };
        match (key, value) {
            ("allow_other", None) => out.push("--allow-other".into()),
            ("ro", None) => out.push("--read-only".into()),
            ("no_io_uring", None) => out.push("--no-io-uring".into()),
            ("allow_lossy", None) => out.push("--allow-lossy".into()),
            (
                "threads" | "conversions" | "data_dtype" | "index_dtypes" | "matrix" | "writers"
                | "worker_user" | "obs" | "neighbors" | "obsm" | "batch_memory",
                Some(v),
            ) if !v.is_empty() => {
                out.push(format!("--{}", key.replace('_', "-")).into());
                out.push(v.into());
            }
            _ => return Err(format!("unknown mount option '{opt}'")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn fstab_options_translate() {
        let got = mount_args(&os(&[
            "/var/lib/scdl-fs",
            "/mnt/scdl",
            "-o",
            "ro,allow_other,_netdev,nofail,x-systemd.automount,threads=8,writers=lab,no_io_uring,batch_memory=2G",
        ]))
        .unwrap();
        assert_eq!(
            got,
            os(&[
                "mount",
                "/mnt/scdl",
                "--store",
                "/var/lib/scdl-fs",
                "--read-only",
                "--allow-other",
                "--threads",
                "8",
                "--writers",
                "lab",
                "--no-io-uring",
                "--batch-memory",
                "2G"
            ])
        );
    }

    #[test]
    fn per_cell_metadata_options_translate() {
        let got = mount_args(&os(&["s", "m", "-o", "obs=none,neighbors=knn,obsm=X_pca"])).unwrap();
        let want = ["--obs", "none", "--neighbors", "knn", "--obsm", "X_pca"];
        assert_eq!(got[4..], os(&want)[..]);
    }

    #[test]
    fn bad_options_are_named() {
        let err = mount_args(&os(&["s", "m", "-o", "allow_other,frobnicate"])).unwrap_err();
        assert!(err.contains("frobnicate"), "{err}");
        assert!(mount_args(&os(&["s", "-o", "rw"]))
            .unwrap_err()
            .contains("STORE MOUNTPOINT"));
        assert!(mount_args(&os(&["s", "m", "-o"])).is_err());
        assert!(mount_args(&os(&["s", "m", "-o", "threads="])).is_err());
    }

    #[test]
    fn recognises_helper_invocations() {
        assert!(is_helper_invocation(&os(&[
            "/sbin/mount.fuse.scdl-fs",
            "s",
            "m"
        ])));
        assert!(is_helper_invocation(&os(&[
            "scdl-fs",
            "/var/lib/scdl-fs",
            "/mnt/x",
            "-o",
            "rw"
        ])));
        assert!(!is_helper_invocation(&os(&["scdl-fs", "mount", "/mnt/x"])));
        assert!(!is_helper_invocation(&os(&[
            "scdl-fs", "convert", "a", "b"
        ])));
    }
}
