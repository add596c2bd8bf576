//! parse_npy on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cnnkit_io::parse_npy(data, "fuzz.npy");
});
