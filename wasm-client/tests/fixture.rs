//! The contract fixture the wasm tests read (`tests/fixtures/resnet20_contract.json`) is the
//! server's own contract for the embedded ResNet-20 at N16_L39, made here by the server's code, so
//! it cannot go stale: this test fails when they differ. `BLESS=1 cargo test -p
//! blindsight-wasm-client --test fixture` rewrites it. Native only (the server does not build for
//! wasm32, and the wasm tests cannot read files).
#![cfg(not(target_arch = "wasm32"))]

use blindsight_client::ClientContract;
use blindsight_core::Context;
use blindsight_server::contract::client_contract;
use blindsight_server::he::plan::Plan;
use blindsight_server::model::Model;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/resnet20_contract.json"
);

#[test]
fn contract_fixture_is_the_servers_contract() {
    let model = Model::embedded().unwrap();
    let ctx = Context::named("N16_L39").unwrap();
    let plan = Plan::new(&model, &ctx).unwrap();
    let contract = client_contract(&model, &plan, &ctx).unwrap();
    let json = contract.to_json() + "\n";
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(FIXTURE, &json).unwrap();
    }
    let stored = std::fs::read_to_string(FIXTURE)
        .unwrap_or_else(|e| panic!("{FIXTURE}: {e} (BLESS=1 makes it)"));
    assert!(
        stored == json,
        "{FIXTURE} is not the server's contract any more: rerun with BLESS=1 and commit it"
    );
    // And it reads back as the same contract, checked against its parameter set.
    let back = ClientContract::from_json(stored.as_bytes()).unwrap();
    assert_eq!(back, contract);
    back.context().unwrap();
}
