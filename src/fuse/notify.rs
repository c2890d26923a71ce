//! Telling the kernel to drop what it caches: a row's pages at its last close, and the names of
//! datasets that went away. One thread sends the notifications that must not be sent from the
//! request that causes them (dropping pages waits for their locks, which a READ still queued for
//! this daemon may hold; invalidating a name waits for its directory, which the kernel holds
//! during unlink and lookup).

use std::ffi::OsStr;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

use fuser::INodeNo;

use crate::namespace::KernelCache;

enum Notice {
    /// Every page of the file.
    DropPages(u64),
    /// The entry `name` of directory `parent`.
    ForgetEntry(u64, String),
}

/// The notifier of one mount and the thread that sends for it.
pub struct KernelNotifier {
    notifier: fuser::Notifier,
    later: Mutex<Option<Sender<Notice>>>,
}

impl KernelNotifier {
    /// Starts the notification thread over `notifier`.
    pub fn start(notifier: fuser::Notifier) -> KernelNotifier {
        let (tx, rx) = channel::<Notice>();
        let sender = notifier.clone();
        let spawned = std::thread::Builder::new()
            .name("kernel-notify".into())
            .spawn(move || {
                for notice in rx {
                    send(&sender, &notice);
                }
            });
        let later = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                log::warn!("no kernel notification thread ({e}): row pages stay cached");
                None
            }
        };
        KernelNotifier {
            notifier,
            later: Mutex::new(later),
        }
    }

    fn later(&self, notice: Notice) {
        if let Some(tx) = self.later.lock().expect("notices").as_ref() {
            let _ = tx.send(notice);
        }
    }

    /// Asks the kernel (from the notification thread) to drop the cached pages of `ino`.
    pub fn drop_pages(&self, ino: u64) {
        self.later(Notice::DropPages(ino));
    }
}

fn send(notifier: &fuser::Notifier, notice: &Notice) {
    let _ = match notice {
        // Offset 0, length 0: every page of the file.
        Notice::DropPages(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
        Notice::ForgetEntry(parent, name) => {
            notifier.inval_entry(INodeNo(*parent), OsStr::new(name))
        }
    };
}

impl KernelCache for KernelNotifier {
    fn forget_entry(&self, parent: u64, name: &str) {
        send(
            &self.notifier,
            &Notice::ForgetEntry(parent, name.to_string()),
        );
    }

    fn forget_entry_later(&self, parent: u64, name: &str) {
        self.later(Notice::ForgetEntry(parent, name.to_string()));
    }
}
