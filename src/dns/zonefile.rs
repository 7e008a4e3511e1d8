//! Reads the zone file (RFC 1035 §5 master format) into a [`Zone`].
//!
//! hickory-proto's parser does the lexing; this module checks that the file describes a zone
//! the server can own: exactly one SOA, at the apex, NS records at the apex, and nothing in
//! the `svc`, `cont` and `node` subtrees, which are the server's own.

use std::path::Path;

use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_proto::serialize::txt::Parser;

use crate::zone::{DYNAMIC_SUBTREES, Soa, StaticRecord, Zone, rtype};

/// Largest RDATA a zone-file record may have.
const MAX_RDATA: usize = 8192;

/// Why the zone file cannot be served; each names the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ZoneFileError {
    #[error("cannot read zone file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("zone file {path} does not parse: {message}")]
    Syntax { path: String, message: String },
    #[error("zone file {path} must have exactly one SOA record, at the zone apex; found {found}")]
    Soa { path: String, found: usize },
    #[error("zone file {path}: {name} is outside the zone {apex}")]
    OutOfZone {
        path: String,
        name: String,
        apex: String,
    },
    #[error(
        "zone file {path}: {name} is under {subtree}.{apex}, which stackdns fills from the \
         registration API; remove it from the file"
    )]
    Reserved {
        path: String,
        name: String,
        subtree: &'static str,
        apex: String,
    },
    #[error(
        "zone file {path}: NS records at {name} would delegate part of the zone; only NS at the \
         apex are supported"
    )]
    Delegation { path: String, name: String },
    #[error("zone file {path}: the apex {apex} needs at least one NS record")]
    NoNameServers { path: String, apex: String },
    #[error("zone file {path}: cannot encode the {rtype} record of {name}: {message}")]
    Encode {
        path: String,
        name: String,
        rtype: String,
        message: String,
    },
}

/// Loads and checks the zone file at `path`.
pub fn load(path: &Path) -> Result<Zone, ZoneFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ZoneFileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, Some(path), &shown)
}

/// Parses zone file text; `shown` names the file in errors.
pub fn parse(text: &str, path: Option<&Path>, shown: &str) -> Result<Zone, ZoneFileError> {
    let (_, sets) = Parser::new(text, path.map(Path::to_path_buf), None)
        .parse()
        .map_err(|e| ZoneFileError::Syntax {
            path: shown.to_owned(),
            message: e.to_string(),
        })?;

    let soas: Vec<_> = sets
        .values()
        .filter(|s| s.record_type() == RecordType::SOA)
        .flat_map(|s| s.records_without_rrsigs())
        .collect();
    let [soa_record] = soas[..] else {
        return Err(ZoneFileError::Soa {
            path: shown.to_owned(),
            found: soas.len(),
        });
    };
    let RData::SOA(soa) = &soa_record.data else {
        return Err(ZoneFileError::Soa {
            path: shown.to_owned(),
            found: 0,
        });
    };
    let apex_name = soa_record.name.to_lowercase();
    let apex = wire(&apex_name);
    let apex_text = apex_name.to_string();
    let soa = Soa {
        mname: wire(&soa.mname),
        rname: wire(&soa.rname),
        file_serial: soa.serial,
        refresh: soa.refresh as u32,
        retry: soa.retry as u32,
        expire: soa.expire as u32,
        minimum: soa.minimum,
        ttl: soa_record.ttl,
    };

    let mut records = Vec::new();
    for set in sets.values() {
        if set.record_type() == RecordType::SOA {
            continue;
        }
        let owner_name = set.name().to_lowercase();
        let owner_abs = wire(&owner_name);
        let Some(owner) = crate::name::strip_apex(&owner_abs, &apex) else {
            return Err(ZoneFileError::OutOfZone {
                path: shown.to_owned(),
                name: owner_name.to_string(),
                apex: apex_text,
            });
        };
        if let Some(subtree) = reserved_subtree(owner) {
            return Err(ZoneFileError::Reserved {
                path: shown.to_owned(),
                name: owner_name.to_string(),
                subtree,
                apex: apex_text,
            });
        }
        if set.record_type() == RecordType::NS && !owner.is_empty() {
            return Err(ZoneFileError::Delegation {
                path: shown.to_owned(),
                name: owner_name.to_string(),
            });
        }
        for record in set.records_without_rrsigs() {
            let rdata = encode(&record.data)
                .and_then(|rdata| {
                    // Anything bigger could not share a message with the rest of a transfer.
                    if rdata.len() > MAX_RDATA {
                        Err(format!(
                            "its data is {} bytes; at most {MAX_RDATA} are served",
                            rdata.len()
                        ))
                    } else {
                        Ok(rdata)
                    }
                })
                .map_err(|message| ZoneFileError::Encode {
                    path: shown.to_owned(),
                    name: owner_name.to_string(),
                    rtype: set.record_type().to_string(),
                    message,
                })?;
            records.push(StaticRecord {
                owner: owner.to_vec(),
                rtype: u16::from(set.record_type()),
                ttl: record.ttl,
                rdata,
            });
        }
    }
    if !records.iter().any(|r| r.owner.is_empty() && r.rtype == rtype::NS) {
        return Err(ZoneFileError::NoNameServers {
            path: shown.to_owned(),
            apex: apex_text,
        });
    }
    records.sort_by(|a, b| (&a.owner, a.rtype, &a.rdata).cmp(&(&b.owner, b.rtype, &b.rdata)));
    Ok(Zone { apex, soa, records })
}

/// The dynamic subtree `rel` (a name relative to the apex) falls in, if any: its last label
/// is the one right below the apex.
fn reserved_subtree(rel: &[u8]) -> Option<&'static str> {
    let mut pos = 0usize;
    let mut top: &[u8] = &[];
    while let Some(&len) = rel.get(pos) {
        top = rel.get(pos + 1..pos + 1 + len as usize)?;
        pos += 1 + len as usize;
    }
    DYNAMIC_SUBTREES.into_iter().find(|s| top == s.as_bytes())
}

/// Lower-case absolute wire form of a name.
fn wire(name: &Name) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        out.push(label.len() as u8);
        out.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    out.push(0);
    out
}

/// Uncompressed wire RDATA (canonical form turns name compression off).
fn encode(rdata: &RData) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let mut encoder = BinEncoder::new(&mut buf);
    encoder.set_canonical_form(true);
    rdata.emit(&mut encoder).map_err(|e| e.to_string())?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: &str = "$ORIGIN cluster.test.\n$TTL 300\n\
        @ IN SOA ns1 hostmaster 7 3600 600 86400 5\n\
        @ IN NS ns1\n\
        ns1 IN A 127.0.0.1\n\
        www IN CNAME ns1\n";

    #[test]
    fn loads_apex_soa_and_records() {
        let zone = parse(ZONE, None, "test").expect("loads");
        assert_eq!(zone.apex, b"\x07cluster\x04test\x00");
        assert_eq!(zone.soa.file_serial, 7);
        assert_eq!(zone.soa.minimum, 5);
        assert_eq!(zone.soa.negative_ttl(), 5);
        let ns1: Vec<_> = zone.records.iter().filter(|r| r.owner == b"\x03ns1").collect();
        assert_eq!(ns1.len(), 1);
        assert_eq!(ns1[0].rdata, vec![127, 0, 0, 1]);
        let ns = zone.records.iter().find(|r| r.rtype == rtype::NS).expect("NS");
        assert_eq!(ns.rdata, b"\x03ns1\x07cluster\x04test\x00");
    }

    #[test]
    fn refuses_records_in_dynamic_subtrees() {
        let text = format!("{ZONE}web.svc IN A 10.0.0.1\n");
        let err = parse(&text, None, "test").expect_err("reserved");
        assert!(err.to_string().contains("svc.cluster.test."), "{err}");
        let text = format!("{ZONE}x.node IN A 10.0.0.1\n");
        assert!(matches!(
            parse(&text, None, "t"),
            Err(ZoneFileError::Reserved { .. })
        ));
        let text = format!("{ZONE}svcx IN A 10.0.0.1\n");
        assert!(parse(&text, None, "t").is_ok());
    }

    #[test]
    fn refuses_delegations_and_missing_soa() {
        let text = format!("{ZONE}sub IN NS ns.other.test.\n");
        assert!(matches!(
            parse(&text, None, "t"),
            Err(ZoneFileError::Delegation { .. })
        ));
        let no_soa = "$ORIGIN cluster.test.\n@ 300 IN NS ns1\n";
        assert!(matches!(
            parse(no_soa, None, "t"),
            Err(ZoneFileError::Soa { found: 0, .. })
        ));
    }
}
