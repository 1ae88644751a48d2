#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blindsight_fuzz::model(data));
