//! Request counters for `MNT/.stats`: per path kind and operation, the number of requests, the
//! bytes served and latency percentiles (p50, p99, max), as one JSON document. The mount records
//! every request in one place (`fuse::Connection`), whichever transport brought it.
//!
//! Latencies go into an HDR histogram per kind (hdrhistogram: 3 significant digits from 1 µs to
//! an hour, fixed memory), so the percentiles are exact to 0.1 % whatever the number of requests.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Longest latency told apart (longer ones count as this): one hour, in microseconds.
const MAX_MICROS: u64 = 3_600_000_000;

struct Kind {
    requests: u64,
    bytes: u64,
    errors: u64,
    micros: Histogram<u64>,
}

impl Kind {
    fn new() -> Kind {
        Kind {
            requests: 0,
            bytes: 0,
            errors: 0,
            micros: Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"),
        }
    }
}

/// What `.stats` shows for one path kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindSummary {
    pub requests: u64,
    pub bytes: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Request counters for every path kind (`rows`, `csr`, `batches`, ...) and operation
/// (`lookup`, `open`, `read`, ...), shared by the request threads.
#[derive(Default)]
pub struct RequestStats {
    kinds: Mutex<BTreeMap<(&'static str, &'static str), Kind>>,
}

/// Per path kind, per operation.
pub type Summary = BTreeMap<&'static str, BTreeMap<&'static str, KindSummary>>;

impl RequestStats {
    pub fn new() -> RequestStats {
        RequestStats::default()
    }

    /// Counts one `op` request on a path of `kind` that served `bytes` in `latency` (`ok` false
    /// for a request answered with an error).
    pub fn record(
        &self,
        kind: &'static str,
        op: &'static str,
        bytes: u64,
        latency: Duration,
        ok: bool,
    ) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let k = kinds.entry((kind, op)).or_insert_with(Kind::new);
        k.requests += 1;
        k.bytes += bytes;
        k.errors += !ok as u64;
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        k.micros.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// The counters of every kind and operation seen so far.
    pub fn summary(&self) -> Summary {
        let kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Summary::new();
        for ((kind, op), k) in kinds.iter() {
            let s = KindSummary {
                requests: k.requests,
                bytes: k.bytes,
                errors: k.errors,
                p50_us: k.micros.value_at_quantile(0.5),
                p99_us: k.micros.value_at_quantile(0.99),
                max_us: k.micros.max(),
            };
            out.entry(*kind).or_default().insert(*op, s);
        }
        out
    }

    /// The `.stats` document: `{"requests": {KIND: {OP: {...}}}, EXTRA...}` (extra sections such as
    /// the batch cache's counters are added by the caller), one line with a newline.
    pub fn to_json(&self, extra: serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
        let mut doc = serde_json::Map::new();
        doc.insert(
            "requests".into(),
            serde_json::to_value(self.summary()).expect("serialisable"),
        );
        doc.extend(extra);
        let mut bytes = serde_json::to_vec(&doc).expect("serialisable");
        bytes.push(b'\n');
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_errors_and_percentiles_per_kind() {
        let stats = RequestStats::new();
        // 1..=1000 µs once each: p50 is 500 µs, p99 990 µs (within the histogram's 0.1 %).
        for us in 1..=1000u64 {
            stats.record("batches", "read", 10, Duration::from_micros(us), us != 7);
        }
        stats.record("batches", "open", 0, Duration::from_micros(3), true);
        stats.record("rows", "read", 5, Duration::from_secs(7200), true);
        let s = stats.summary();
        let b = &s["batches"]["read"];
        assert_eq!((b.requests, b.bytes, b.errors), (1000, 10_000, 1));
        assert!((499..=501).contains(&b.p50_us), "{}", b.p50_us);
        assert!((989..=991).contains(&b.p99_us), "{}", b.p99_us);
        assert!((999..=1001).contains(&b.max_us), "{}", b.max_us);
        // Longer than the histogram's range: counted at its top, not lost.
        assert_eq!(s["batches"]["open"].requests, 1);
        assert!(s["rows"]["read"].max_us >= MAX_MICROS * 999 / 1000);
        let mut extra = serde_json::Map::new();
        extra.insert("prefetch".into(), serde_json::json!({"hits": 3}));
        let doc: serde_json::Value = serde_json::from_slice(&stats.to_json(extra)).unwrap();
        assert_eq!(doc["requests"]["batches"]["read"]["requests"], 1000);
        assert_eq!(doc["requests"]["rows"]["read"]["bytes"], 5);
        assert_eq!(doc["prefetch"]["hits"], 3);
    }

    #[test]
    fn concurrent_recorders_lose_nothing() {
        let stats = RequestStats::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        stats.record("csr", "read", 1, Duration::from_micros(3), true);
                    }
                });
            }
        });
        assert_eq!(stats.summary()["csr"]["read"].requests, 4000);
        assert_eq!(stats.summary()["csr"]["read"].bytes, 4000);
    }
}
