//! libFuzzer target: every decoder of untrusted input in Keel, with the
//! properties of `keel_fuzz::check` (no panic; errors name the input; ids
//! follow containerd's rule exactly; accepted URIs have absolute paths).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keel_fuzz::check(data);
});
