//! Background renders of the batches a reader will ask for next: a bounded queue of jobs keyed
//! like the cache, each key queued at most once, served by a few threads started at the first
//! job. Whether a job still fits the memory budget is `BatchCache::prefetch`'s decision when it
//! runs; here only the queue is bounded (a full queue drops new jobs: the reader renders them
//! itself if it gets there first).

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Batches rendered ahead of each open: K+1 ..= K+`DEFAULT_PREFETCH_DEPTH`.
pub const DEFAULT_PREFETCH_DEPTH: u64 = 8;

/// Jobs waiting at most; beyond, new ones are dropped.
const QUEUE_LIMIT: usize = 256;

type Job = Box<dyn FnOnce() + Send>;

struct Queue<K> {
    jobs: VecDeque<(K, Job)>,
    /// Keys queued or running: not queued again.
    keys: HashSet<K>,
}

struct Shared<K> {
    queue: Mutex<Queue<K>>,
    wake: Condvar,
    stop: AtomicBool,
}

/// A queue of prefetch jobs and the threads that run them.
pub struct Prefetcher<K> {
    shared: Arc<Shared<K>>,
    threads: usize,
    started: std::sync::Once,
}

impl<K: Hash + Eq + Clone + Send + 'static> Prefetcher<K> {
    /// A prefetcher of `threads` threads (at least one), started at the first `submit`.
    pub fn new(threads: usize) -> Prefetcher<K> {
        Prefetcher {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue {
                    jobs: VecDeque::new(),
                    keys: HashSet::new(),
                }),
                wake: Condvar::new(),
                stop: AtomicBool::new(false),
            }),
            threads: threads.max(1),
            started: std::sync::Once::new(),
        }
    }

    /// Queues `job` under `key` unless that key is queued or running already, or the queue is
    /// full. Returns whether it was queued.
    pub fn submit(&self, key: K, job: impl FnOnce() + Send + 'static) -> bool {
        if self.shared.stop.load(Ordering::Relaxed) {
            return false;
        }
        self.started.call_once(|| self.start());
        let mut q = lock(&self.shared.queue);
        if q.jobs.len() >= QUEUE_LIMIT || !q.keys.insert(key.clone()) {
            return false;
        }
        q.jobs.push_back((key, Box::new(job)));
        drop(q);
        self.shared.wake.notify_one();
        true
    }

    /// Jobs queued or running now.
    pub fn pending(&self) -> usize {
        lock(&self.shared.queue).keys.len()
    }

    /// Stops the threads once their current jobs end; queued jobs are dropped.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut q = lock(&self.shared.queue);
        q.jobs.clear();
        q.keys.clear();
        drop(q);
        self.shared.wake.notify_all();
    }

    fn start(&self) {
        for i in 0..self.threads {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("batch-prefetch-{i}"))
                .spawn(move || serve(&shared));
            if let Err(e) = spawned {
                log::warn!("cannot start a prefetch thread: {e}");
            }
        }
    }
}

impl<K> Drop for Prefetcher<K> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A job that panicked leaves a consistent queue (it is not held while jobs run).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One prefetch thread: runs jobs in queue order until stopped.
fn serve<K: Hash + Eq>(shared: &Shared<K>) {
    loop {
        let mut q = lock(&shared.queue);
        let (key, job) = loop {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            match q.jobs.pop_front() {
                Some(next) => break next,
                None => q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
            }
        };
        drop(q);
        // A panicking render must not take the thread (and later prefetches) with it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        lock(&shared.queue).keys.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_key_is_queued_once_and_every_job_runs() {
        let p = Prefetcher::new(2);
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Arc::new(Mutex::new(go_rx));
        let blocker = {
            let (tx, go_rx) = (tx.clone(), go_rx.clone());
            move || {
                go_rx.lock().unwrap().recv().unwrap();
                tx.send(0).unwrap();
            }
        };
        assert!(p.submit(0, blocker));
        assert!(!p.submit(0, || {}), "key 0 is queued or running");
        for k in 1..5 {
            let tx = tx.clone();
            assert!(p.submit(k, move || tx.send(k).unwrap()));
        }
        go_tx.send(()).unwrap();
        let mut got: Vec<i32> = (0..5).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        // Once run, a key may be queued again.
        while p.pending() > 0 {
            std::thread::yield_now();
        }
        assert!(p.submit(0, || {}));
    }

    #[test]
    fn a_panicking_job_leaves_the_threads_serving() {
        let p = Prefetcher::new(1);
        assert!(p.submit(1, || panic!("render failed")));
        let (tx, rx) = mpsc::channel();
        while !p.submit(2, {
            let tx = tx.clone();
            move || tx.send(2).unwrap()
        }) {
            std::thread::yield_now();
        }
        assert_eq!(rx.recv().unwrap(), 2);
        p.stop();
        assert!(!p.submit(3, || {}));
    }
}
