//! Every API request body and query string through its handler's decoding and validation
//! (the first byte picks which).

#![no_main]

use libfuzzer_sys::fuzz_target;
use stackdns::api::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Some((&how, body)) = data.split_first() else {
        return;
    };
    match how % 7 {
        0 => {
            fuzzing::node(body);
        }
        1 => {
            fuzzing::container(body);
        }
        2 => {
            fuzzing::container_list(body);
        }
        3 => {
            fuzzing::scale(body);
        }
        4 => {
            fuzzing::limits(body);
        }
        5 => {
            if let Ok(text) = std::str::from_utf8(body) {
                fuzzing::query_string(text);
            }
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(body) {
                fuzzing::label(text);
            }
        }
    }
});
