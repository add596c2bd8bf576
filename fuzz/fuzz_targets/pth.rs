//! read_pth on arbitrary bytes. The input is also tried as the object pickle of a legacy
//! torch.save stream, because inside a zip most mutations are caught by the CRC check before
//! they reach the unpickler.
#![no_main]

use libfuzzer_sys::fuzz_target;

const LEGACY_HEAD: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e\x80\x02M\xe9\x03.\x80\x02}q\x00.";

fuzz_target!(|data: &[u8]| {
    let _ = cnnkit_io::read_pth(data, "fuzz.pth");
    let mut legacy = LEGACY_HEAD.to_vec();
    legacy.extend_from_slice(data);
    let _ = cnnkit_io::read_pth(&legacy, "fuzz.pth");
});
