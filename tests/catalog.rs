//! The catalogue driven alone, without the mounted tree or FUSE: dropped inputs and a concat
//! become ready archives (checked by the oracle, tests/oracle/verify.py), and the catalogue tells
//! its observer of concats ended and of datasets that left the store.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scdl_fs::catalog::{Catalog, CatalogOptions, Observer, State};
use scdl_fs::names::DatasetName;
use scdl_fs::store::Store;

use common::{bin, fixtures, verify};

/// What the catalogue reported, in order.
#[derive(Default)]
struct Recorder {
    gone: Mutex<Vec<String>>,
    concats: Mutex<Vec<(String, Result<String, String>)>>,
}

impl Observer for Recorder {
    fn gone(&self, name: &DatasetName) {
        self.gone.lock().unwrap().push(name.to_string());
    }
    fn concat_ended(&self, command: &str, outcome: Result<String, String>) {
        self.concats
            .lock()
            .unwrap()
            .push((command.to_string(), outcome));
    }
}

fn state(catalog: &Catalog, name: &str) -> Option<&'static str> {
    catalog.dataset_named(name).map(|d| d.state().name())
}

#[test]
fn inputs_and_a_concat_become_archives_and_the_observer_hears_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let src = fixtures().join("csr_f32.h5ad");
    for name in ["a", "b"] {
        std::fs::copy(&src, store.join(format!("{name}.h5ad"))).unwrap();
    }
    let recorder = Arc::new(Recorder::default());
    let options = CatalogOptions {
        workers: 1,
        converter: Some(bin()),
        ..Default::default()
    };
    let catalog = Catalog::new(Store::open(&store).unwrap(), options, recorder.clone());
    assert_eq!(state(&catalog, "a"), Some("queued"));
    let _workers = catalog.start_workers();
    assert!(catalog.wait_idle(Duration::from_secs(60)));
    assert_eq!(state(&catalog, "a"), Some("ready"));
    assert_eq!(state(&catalog, "b"), Some("ready"));

    let command = "concat ab a b";
    let started = catalog.start_concat("ab", &["a", "b"], command);
    assert_eq!(started, Ok("concat ab: started".to_string()));
    assert!(catalog.wait_idle(Duration::from_secs(60)));
    let ab = catalog.dataset_named("ab").unwrap();
    assert!(
        matches!(ab.state(), State::Ready(_)),
        "{}",
        ab.state().name()
    );
    let v = verify(&store.join("ab"), &[src.as_path(), src.as_path()], &[]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    assert_eq!(
        *recorder.concats.lock().unwrap(),
        vec![(command.to_string(), Ok("ab ready".to_string()))]
    );

    // A dataset removed from the store by hand is forgotten at the next rescan, and reported.
    assert!(recorder.gone.lock().unwrap().is_empty());
    std::fs::remove_dir_all(store.join("ab")).unwrap();
    catalog.rescan();
    assert_eq!(state(&catalog, "ab"), None);
    assert_eq!(*recorder.gone.lock().unwrap(), vec!["ab".to_string()]);
    catalog.shutdown();
    assert_store_has(&store, &["a", "a.h5ad", "b", "b.h5ad"]);
}

fn assert_store_has(store: &Path, names: &[&str]) {
    let mut found: Vec<String> = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    found.sort();
    assert_eq!(found, names);
}
