//! Two daemons over one store reached through a real network file system, as two cluster nodes
//! would reach an NFS export. This machine has neither an NFS client nor an NFS server, so the
//! network file system is sshfs (SFTP over a loopback sshd that the test starts): each daemon
//! gets its own sshfs mount of the same directory, like two NFS clients, with sshfs's directory
//! cache off (NFS's close-to-open consistency is the nearer model). sshfs has no
//! renameat2(RENAME_NOREPLACE) (EINVAL), so this also exercises the fallback publication.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, fixtures, is_mounted};

/// A loopback sshd and the sshfs mounts made through it; all torn down on drop.
struct Sshd {
    dir: PathBuf,
    port: u16,
    mounts: Vec<PathBuf>,
}

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    fn start(dir: &Path) -> Sshd {
        let dir = dir.join("sshd");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap(); // privilege separation directory
        for key in ["client_key", "host_key"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join(key)));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nPidFile {d}/sshd.pid\nSubsystem sftp internal-sftp\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).unwrap();
        // sshd daemonises once it listens.
        run(Command::new("/usr/sbin/sshd")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .arg("-E")
            .arg(dir.join("sshd.log")));
        Sshd {
            dir,
            port,
            mounts: Vec::new(),
        }
    }

    /// Mounts `remote` (a local directory, reached through sshd) at `at` with sshfs.
    fn sshfs(&mut self, remote: &Path, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        let opts = format!(
            "IdentityFile={}/client_key,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,\
             BatchMode=yes,port={},dir_cache=no",
            self.dir.display(),
            self.port
        );
        run(Command::new("sshfs")
            .arg(format!("root@127.0.0.1:{}", remote.display()))
            .arg(at)
            .args(["-o", &opts]));
        self.mounts.push(at.to_path_buf());
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("sshd.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// A foreground daemon with its own log (the daemons share the store but not a log file: O_APPEND
/// from two sshfs clients is not atomic).
struct Daemon {
    mnt: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Daemon {
    fn start(root: &Path, name: &str, store: &Path) -> Daemon {
        let mnt = root.join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let log = root.join(format!("{name}.log"));
        let child = Command::new(bin())
            .args(["mount", mnt.to_str().unwrap(), "--foreground", "--store"])
            .arg(store)
            .env("RUST_LOG", "scdl_fs=info,fuser=error")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&mnt) {
            assert!(Instant::now() < deadline, "{name} did not mount");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { mnt, log, child }
    }

    fn wait_ready(&self, name: &str) {
        common::wait_ready(&self.mnt, name);
    }

    fn conversions_of(&self, name: &str) -> usize {
        let needle = format!("{name}: converting ");
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_daemons_over_sshfs_agree_and_convert_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let exported = root.join("exported");
    std::fs::create_dir(&exported).unwrap();
    let mut sshd = Sshd::start(root);
    let (net1, net2) = (root.join("net1"), root.join("net2"));
    sshd.sshfs(&exported, &net1);
    sshd.sshfs(&exported, &net2);
    let a = Daemon::start(root, "a", &net1.join("store"));
    let b = Daemon::start(root, "b", &net2.join("store"));
    let daemons = [&a, &b];

    // Dropped through one, served by both.
    let src = fixtures().join("large_csr_f32.h5ad");
    std::fs::copy(&src, a.mnt.join("big.h5ad")).unwrap();
    a.wait_ready("big");
    b.wait_ready("big");
    common::read_check(&b.mnt, "big", &[&src], &["--samples", "40"]);

    // Inputs put into the shared store through one node's sshfs mount: each converted once.
    let names = ["n0", "n1", "n2", "n3"];
    for (i, name) in names.iter().enumerate() {
        let f = [
            "csr_f32.h5ad",
            "csr_gzip.h5ad",
            "dense_f32.h5ad",
            "csc_f32.h5ad",
        ][i];
        common::place_input(&net2.join("store"), name, &fixtures().join(f));
    }
    for name in names {
        for d in daemons {
            d.wait_ready(name);
        }
        let total: usize = daemons.iter().map(|d| d.conversions_of(name)).sum();
        assert_eq!(total, 1, "{name} converted {total} times");
    }

    // Racing drops of one name through the two nodes: one wins, the store has its bytes.
    let (fa, fb) = (
        fixtures().join("csr_f32.h5ad"),
        fixtures().join("csr_i32.h5ad"),
    );
    for round in 0..8 {
        let file = format!("race{round}.h5ad");
        let (winner, e) = common::race_drops(&a.mnt, &b.mnt, &file, &fa, &fb);
        assert!(
            common::refused_drop(&e),
            "round {round}: the loser failed with {e}"
        );
        let name = format!("race{round}");
        a.wait_ready(&name);
        b.wait_ready(&name);
        assert_eq!(
            std::fs::read(exported.join("store").join(&file)).unwrap(),
            std::fs::read(winner).unwrap()
        );
    }
    let temps: Vec<String> = common::listing(&exported.join("store"))
        .into_iter()
        .filter(|n| n.contains("scdl-tmp"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
}
