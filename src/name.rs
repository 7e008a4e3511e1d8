//! Domain names in wire form (RFC 1035 §3.1), lower-case, as the snapshot keys them.
//!
//! The snapshot keys every name by its labels *relative to the apex* (`\x03web\x03svc` for
//! `web.svc.<zone>`), so a query is matched with one suffix check and one hash lookup.

/// Longest name in wire form, root label included (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;

/// Appends `label` in wire form (length octet, then the octets).
///
/// Callers pass validated labels (1..=63 octets); a longer one would corrupt the encoding.
pub fn push_label(out: &mut Vec<u8>, label: &str) {
    debug_assert!(!label.is_empty() && label.len() <= 63);
    out.push(label.len() as u8);
    out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
}

/// Wire-form relative name from labels given left to right (`["web", "svc"]`).
pub fn relative(labels: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(relative_len(labels));
    push_relative(&mut out, labels);
    out
}

/// The length of [`relative`]'s result.
pub fn relative_len(labels: &[&str]) -> usize {
    labels.iter().map(|l| l.len() + 1).sum()
}

/// Appends [`relative`]'s result to `out`.
pub fn push_relative(out: &mut Vec<u8>, labels: &[&str]) {
    for label in labels {
        push_label(out, label);
    }
}

/// Iterates the suffixes of a relative wire name that are themselves names, nearest
/// ancestor first, ending with the empty name (the apex): `a.b.c` yields `b.c`, `c`, ``.
pub fn ancestors(rel: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos >= rel.len() {
            return None;
        }
        pos += 1 + rel[pos] as usize;
        Some(&rel[pos.min(rel.len())..])
    })
}

/// Renders a wire name (relative or absolute) as dotted text, for logs and errors.
pub fn to_text(wire: &[u8]) -> String {
    let mut out = String::new();
    let mut pos = 0usize;
    while pos < wire.len() {
        let len = wire[pos] as usize;
        if len == 0 {
            break;
        }
        let end = (pos + 1 + len).min(wire.len());
        if !out.is_empty() {
            out.push('.');
        }
        for &b in &wire[pos + 1..end] {
            if b.is_ascii_graphic() && b != b'.' && b != b'\\' {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\{b:03}"));
            }
        }
        pos = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_are_lower_case_wire_labels() {
        assert_eq!(relative(&["Web", "svc"]), b"\x03web\x03svc".to_vec());
        assert_eq!(relative(&[]), Vec::<u8>::new());
    }

    #[test]
    fn ancestors_walk_up_to_the_apex() {
        let name = relative(&["a", "bb", "c"]);
        let got: Vec<_> = ancestors(&name).map(to_text).collect();
        assert_eq!(got, vec!["bb.c", "c", ""]);
    }

    #[test]
    fn text_escapes_odd_octets() {
        assert_eq!(to_text(b"\x03a.b\x01c\x00"), "a\\046b.c");
    }
}

/// The part of absolute wire name `abs` (lower-case) below `apex`, if `abs` is at or under it.
///
/// Matching happens on a label boundary, so `xcluster.test.` is not under `cluster.test.`.
pub fn strip_apex<'a>(abs: &'a [u8], apex: &[u8]) -> Option<&'a [u8]> {
    let mut pos = 0usize;
    loop {
        let rest = abs.get(pos..)?;
        if rest == apex {
            return Some(&abs[..pos]);
        }
        let len = *rest.first()? as usize;
        if len == 0 {
            return None;
        }
        pos += 1 + len;
    }
}

#[cfg(test)]
mod apex_tests {
    use super::*;

    #[test]
    fn strip_apex_matches_on_label_boundaries_only() {
        let apex = b"\x07cluster\x04test\x00";
        assert_eq!(
            strip_apex(b"\x03web\x07cluster\x04test\x00", apex),
            Some(&b"\x03web"[..])
        );
        assert_eq!(strip_apex(apex, apex), Some(&b""[..]));
        assert_eq!(strip_apex(b"\x08xcluster\x04test\x00", apex), None);
        assert_eq!(strip_apex(b"\x04test\x00", apex), None);
        assert_eq!(strip_apex(b"\x05", apex), None);
    }
}
