//! The contract fixture the wasm tests read (`tests/fixtures/resnet20_contract.json`) is the
//! server's own contract for the embedded ResNet-20 at N16_L39, made here by the server's code, so
//! it cannot go stale: this test fails when they differ. `BLESS=1 cargo test -p
//! blindsight-wasm-client --test fixture` rewrites it. Native only (the server does not build for
//! wasm32, and the wasm tests cannot read files).
#![cfg(not(target_arch = "wasm32"))]

use blindsight_client::ClientContract;
use blindsight_core::Context;
use blindsight_server::contract::server_contract;
use blindsight_server::model::Model;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/resnet20_contract.json"
);

/// The reduced test network (the server's `tests/fixtures/mini_resnet`) at N14_TEST: what the
/// wasm round trip makes keys and an encryption for, and the server side then evaluates.
const MINI_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/mini_contract.json"
);

/// The server's contract for `model` at `params`, checked against (or with BLESS=1 written to)
/// `fixture`.
fn check_fixture(model: &Model, params: &str, fixture: &str) -> (ClientContract, String) {
    let ctx = Context::named(params).unwrap();
    let defaults = blindsight_server::api::ServeConfig::default();
    let (_, _, contract) = server_contract(model, &ctx, defaults.max_batch).unwrap();
    let json = contract.to_json() + "\n";
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(fixture, &json).unwrap();
    }
    let stored = std::fs::read_to_string(fixture)
        .unwrap_or_else(|e| panic!("{fixture}: {e} (BLESS=1 makes it)"));
    assert!(
        stored == json,
        "{fixture} is not the server's contract any more: rerun with BLESS=1 and commit it"
    );
    (contract, stored)
}

#[test]
fn mini_contract_fixture_is_the_servers_contract() {
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../native-server/tests/fixtures/mini_resnet"
    );
    let model = Model::from_dir(std::path::Path::new(dir)).unwrap();
    let (contract, stored) = check_fixture(&model, "N14_TEST", MINI_FIXTURE);
    assert_eq!(
        ClientContract::from_json(stored.as_bytes()).unwrap(),
        contract
    );
}

#[test]
fn contract_fixture_is_the_servers_contract() {
    let model = Model::embedded().unwrap();
    let (contract, stored) = check_fixture(&model, "N16_L39", FIXTURE);
    // And it reads back as the same contract, checked against its parameter set.
    let back = ClientContract::from_json(stored.as_bytes()).unwrap();
    assert_eq!(back, contract);
    back.context().unwrap();
}
