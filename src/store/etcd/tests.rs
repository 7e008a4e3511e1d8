use super::*;

#[test]
fn log_keys_sort_by_position_and_read_back() {
    let prefix = "/stackdns/";
    let keys: Vec<Vec<u8>> = [1u64, 2, 15, 16, 255, 1 << 40]
        .iter()
        .map(|&p| log_key(prefix, p))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "etcd ranges over keys in byte order");
    assert_eq!(position_of(prefix, &log_key(prefix, 1 << 40)), Some(1 << 40));
    assert_eq!(position_of(prefix, b"/stackdns/log/zz"), None);
    assert_eq!(position_of(prefix, b"/other/log/0000000000000001"), None);
    // Every log key is below the end of the range loads read.
    assert!(log_key(prefix, u64::MAX) < b"/stackdns/log/g".to_vec());
}

#[test]
fn a_reference_names_its_chunks_and_no_entry_looks_like_one() {
    assert_eq!(
        parse_reference(&reference("12@ab", 3)),
        Some((3, "12@ab".to_owned()))
    );
    assert_eq!(parse_reference(b"SDE1...."), None);
}
