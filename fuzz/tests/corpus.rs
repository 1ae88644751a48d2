//! Every harness over every file of its committed corpus (`corpus/<target>/`) and of its
//! regressions (`regressions/<target>/`, the inputs that once crashed it): the fuzzers' findings
//! stay fixed under plain `cargo test`, without libFuzzer.

use std::path::{Path, PathBuf};

use blindsight_fuzz::TARGETS;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

fn replay(target: &str) {
    let harness = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target")
        .1;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = files(&root.join("corpus").join(target));
    assert!(!corpus.is_empty(), "{target} has a committed corpus");
    let regressions = files(&root.join("regressions").join(target));
    let mut failed = Vec::new();
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).unwrap();
        if std::panic::catch_unwind(|| harness(&data)).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(failed.is_empty(), "{target} fails on {failed:#?}");
}

#[test]
fn every_target_is_listed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in TARGETS {
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "{name} has a fuzz target"
        );
    }
    assert_eq!(files(&root.join("fuzz_targets")).len(), TARGETS.len());
}

macro_rules! replay {
    ($($name:ident),* $(,)?) => {
        $(#[test]
        fn $name() {
            replay(stringify!($name));
        })*
    };
}

replay!(
    wire_ciphertext,
    wire_plaintext,
    wire_public_key,
    wire_switching_key,
    wire_params,
    contract,
    model,
    image,
    http,
);
