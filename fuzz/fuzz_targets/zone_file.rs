//! The zone-file reader (hickory's parser, then stackdns's own rules), on any text.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // No path: $INCLUDE has nothing to resolve against.
    let _ = stackdns::dns::zonefile::parse(text, None, "fuzz zone");
});
