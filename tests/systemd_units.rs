//! The systemd units and examples in systemd/ pass `systemd-analyze verify`
//! (scripts/verify-units.sh does the work: stub binary in a temporary directory, the template as
//! instances, the fstab line through systemd-fstab-generator).

use std::path::Path;
use std::process::Command;

#[test]
fn systemd_units_verify() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/verify-units.sh"))
        .current_dir(root)
        .output()
        .expect("cannot run bash scripts/verify-units.sh");
    assert!(
        out.status.success(),
        "scripts/verify-units.sh failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
