//! The Stackfile reader, YAML or JSON by content type (the first byte picks one).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&how, body)) = data.split_first() else {
        return;
    };
    let content_type = match how % 3 {
        0 => None,
        1 => Some("application/json"),
        _ => Some("application/yaml"),
    };
    let _ = stackdns::api::fuzzing::stackfile(body, content_type);
});
