//! TSIG (RFC 8945) with HMAC-SHA256: checking signed requests and signing their responses.
//!
//! A request either carries no TSIG (answered as usual), a valid one (answered, and every
//! response message signed; zone transfers are then allowed whatever the peer's address), or a
//! bad one, which gets NOTAUTH with the TSIG error of RFC 8945 §5.2: BADKEY and BADSIG
//! unsigned, BADTIME signed and carrying the server's time.
//!
//! [`wire::parse`](super::wire::parse) has already found the record (the last of the
//! additional section); this module reads its fields from there and never walks the packet.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::wire::{HEADER_LEN, RecordAt, TYPE_TSIG, name_end};

type HmacSha256 = Hmac<Sha256>;

const CLASS_ANY: u16 = 255;
const RCODE_NOTAUTH: u16 = 9;
const BADSIG: u16 = 16;
const BADKEY: u16 = 17;
const BADTIME: u16 = 18;
/// Seconds of clock difference allowed, as RFC 8945 §10 recommends.
const FUDGE: u16 = 300;
/// `hmac-sha256.` in wire form.
const HMAC_SHA256: &[u8] = b"\x0bhmac-sha256\x00";
const MAC_LEN: usize = 32;

/// A shared secret, by name.
#[derive(Clone)]
pub struct Key {
    /// Lower-case wire form of the key name.
    pub name: Vec<u8>,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", crate::name::to_text(&self.name))
    }
}

/// Why a `--tsig-key` value was refused.
#[derive(Debug, thiserror::Error)]
#[error("TSIG key {value:?}: {reason}; expected NAME:hmac-sha256:BASE64SECRET")]
pub struct KeyError {
    value: String,
    reason: &'static str,
}

impl std::str::FromStr for Key {
    type Err = KeyError;

    fn from_str(value: &str) -> Result<Self, KeyError> {
        let err = |reason| KeyError {
            value: value.split(':').take(2).collect::<Vec<_>>().join(":") + ":…",
            reason,
        };
        let mut parts = value.splitn(3, ':');
        let (Some(name), Some(algorithm), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(err("it has fewer than three ':'-separated parts"));
        };
        if !algorithm.eq_ignore_ascii_case("hmac-sha256") {
            return Err(err("only hmac-sha256 is supported"));
        }
        let secret = base64::engine::general_purpose::STANDARD
            .decode(secret.trim())
            .map_err(|_| err("the secret is not valid base64"))?;
        if secret.is_empty() {
            return Err(err("the secret is empty"));
        }
        let mut wire = Vec::new();
        for label in name.trim_end_matches('.').split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(err("the name is not a valid domain name"));
            }
            crate::name::push_label(&mut wire, label);
        }
        wire.push(0);
        Ok(Key { name: wire, secret })
    }
}

/// A verified request: what signing its responses needs.
#[derive(Debug, Clone)]
pub struct Signer {
    key: Key,
    /// The request's MAC, then each response's: the next message's MAC covers it.
    prior_mac: Vec<u8>,
    time_signed: u64,
    original_id: u16,
    /// Messages signed so far (the first response covers the request's variables).
    signed: usize,
}

/// What checking a request found.
pub enum Check {
    Unsigned,
    /// A TSIG record whose fields do not fit its RDATA: FORMERR (RFC 8945 §5.1).
    Malformed,
    Valid(Signer),
    /// Send this NOTAUTH answer instead.
    Refused(Vec<u8>),
}

/// The TSIG record at the end of a message.
struct Found<'p> {
    /// Offset of the TSIG RR: the message without it ends here.
    start: usize,
    key_name: Vec<u8>,
    algorithm: Vec<u8>,
    time_signed: u64,
    fudge: u16,
    mac: &'p [u8],
    original_id: u16,
}

/// Checks the TSIG record that `wire::parse` found at `at` in `packet` against `keys`, at the
/// current time. A record whose fields do not exactly fill its RDATA is `Malformed`.
pub fn check(keys: &[Key], packet: &[u8], at: RecordAt) -> Check {
    check_at(keys, packet, at, super::unix_now())
}

fn check_at(keys: &[Key], packet: &[u8], at: RecordAt, now: u64) -> Check {
    let Some(found) = read(packet, at) else {
        return Check::Malformed;
    };
    let key = keys.iter().find(|k| k.name == found.key_name);
    let Some(key) = key.filter(|_| found.algorithm == HMAC_SHA256) else {
        return Check::Refused(error_reply(packet, &found, BADKEY, None));
    };
    let mut mac = HmacSha256::new_from_slice(&key.secret).expect("HMAC takes keys of any length");
    mac.update(&request_header(packet, found.original_id));
    mac.update(&packet[HEADER_LEN..found.start]);
    variables(&mut mac, &key.name, found.time_signed, found.fudge, 0, &[]);
    if found.mac.len() != MAC_LEN || mac.verify_slice(found.mac).is_err() {
        return Check::Refused(error_reply(packet, &found, BADSIG, None));
    }
    let signer = Signer {
        key: key.clone(),
        prior_mac: found.mac.to_vec(),
        time_signed: now,
        original_id: found.original_id,
        signed: 0,
    };
    // The window is the request's fudge, but never more than ours (RFC 8945 §10: 300 s).
    if now.abs_diff(found.time_signed) > u64::from(found.fudge.min(FUDGE)) {
        return Check::Refused(error_reply(packet, &found, BADTIME, Some(signer)));
    }
    Check::Valid(signer)
}

/// The request's header as it was signed: the original ID, and ARCOUNT without the TSIG.
fn request_header(packet: &[u8], original_id: u16) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&packet[..HEADER_LEN]);
    header[..2].copy_from_slice(&original_id.to_be_bytes());
    let arcount = u16::from_be_bytes([header[10], header[11]]).saturating_sub(1);
    header[10..12].copy_from_slice(&arcount.to_be_bytes());
    header
}

/// The TSIG variables of RFC 8945 §4.3.3.
fn variables(mac: &mut HmacSha256, key_name: &[u8], time: u64, fudge: u16, error: u16, other: &[u8]) {
    mac.update(key_name);
    mac.update(&CLASS_ANY.to_be_bytes());
    mac.update(&0u32.to_be_bytes());
    mac.update(HMAC_SHA256);
    mac.update(&time.to_be_bytes()[2..]);
    mac.update(&fudge.to_be_bytes());
    mac.update(&error.to_be_bytes());
    mac.update(&(other.len() as u16).to_be_bytes());
    mac.update(other);
}

impl Signer {
    /// Bytes the TSIG record will add to a response.
    pub fn reserve(&self) -> usize {
        self.key.name.len() + 10 + HMAC_SHA256.len() + 16 + MAC_LEN
    }

    /// Appends a TSIG record to `message` (a complete response) and counts it in ARCOUNT.
    pub fn sign(&mut self, message: &mut Vec<u8>) {
        self.sign_with(message, 0, &[]);
    }

    fn sign_with(&mut self, message: &mut Vec<u8>, error: u16, other: &[u8]) {
        let mut mac = HmacSha256::new_from_slice(&self.key.secret).expect("HMAC takes keys of any length");
        mac.update(&(self.prior_mac.len() as u16).to_be_bytes());
        mac.update(&self.prior_mac);
        mac.update(message);
        if self.signed == 0 {
            variables(&mut mac, &self.key.name, self.time_signed, FUDGE, error, other);
        } else {
            // Later messages of a transfer cover the timers only (RFC 8945 §5.3.1).
            mac.update(&self.time_signed.to_be_bytes()[2..]);
            mac.update(&FUDGE.to_be_bytes());
        }
        let digest = mac.finalize().into_bytes();
        self.prior_mac = digest.to_vec();
        self.signed += 1;
        append_tsig(
            message,
            &self.key.name,
            self.time_signed,
            &digest,
            self.original_id,
            error,
            other,
        );
    }
}

fn append_tsig(
    message: &mut Vec<u8>,
    key_name: &[u8],
    time: u64,
    mac: &[u8],
    original_id: u16,
    error: u16,
    other: &[u8],
) {
    let rdlen = HMAC_SHA256.len() + 6 + 2 + 2 + mac.len() + 2 + 2 + 2 + other.len();
    message.extend_from_slice(key_name);
    message.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    message.extend_from_slice(&CLASS_ANY.to_be_bytes());
    message.extend_from_slice(&0u32.to_be_bytes());
    message.extend_from_slice(&(rdlen as u16).to_be_bytes());
    message.extend_from_slice(HMAC_SHA256);
    message.extend_from_slice(&time.to_be_bytes()[2..]);
    message.extend_from_slice(&FUDGE.to_be_bytes());
    message.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    message.extend_from_slice(mac);
    message.extend_from_slice(&original_id.to_be_bytes());
    message.extend_from_slice(&error.to_be_bytes());
    message.extend_from_slice(&(other.len() as u16).to_be_bytes());
    message.extend_from_slice(other);
    let arcount = u16::from_be_bytes([message[10], message[11]]) + 1;
    message[10..12].copy_from_slice(&arcount.to_be_bytes());
}

/// NOTAUTH with the question echoed and a TSIG carrying `error`: signed for BADTIME (with the
/// server's time as other data), unsigned with an empty MAC otherwise.
fn error_reply(packet: &[u8], found: &Found<'_>, error: u16, signer: Option<Signer>) -> Vec<u8> {
    let question_end = question_end(packet).unwrap_or(HEADER_LEN);
    let mut out = Vec::with_capacity(question_end + 100);
    out.extend_from_slice(&packet[..question_end]);
    let flags = (u16::from_be_bytes([packet[2], packet[3]]) & 0x7900) | 0x8000 | RCODE_NOTAUTH;
    out[2..4].copy_from_slice(&flags.to_be_bytes());
    let qd: u16 = if question_end > HEADER_LEN { 1 } else { 0 };
    out[4..6].copy_from_slice(&qd.to_be_bytes());
    out[6..12].fill(0);
    match signer {
        Some(mut signer) => {
            let server_time = signer.time_signed;
            signer.time_signed = found.time_signed;
            signer.sign_with(&mut out, error, &server_time.to_be_bytes()[2..]);
        }
        None => append_tsig(
            &mut out,
            &found.key_name,
            found.time_signed,
            &[],
            found.original_id,
            error,
            &[],
        ),
    }
    out
}

fn question_end(packet: &[u8]) -> Option<usize> {
    if u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]) != 1 {
        return None;
    }
    let mut pos = HEADER_LEN;
    loop {
        let len = *packet.get(pos)? as usize;
        if len & 0xC0 != 0 {
            return None;
        }
        pos += 1 + len;
        if len == 0 {
            break;
        }
    }
    (pos + 4 <= packet.len()).then_some(pos + 4)
}

/// Reads the TSIG record at `at` (its owner, type and bounds checked by `wire::parse`).
fn read(packet: &[u8], at: RecordAt) -> Option<Found<'_>> {
    let RecordAt { start, rdata, end } = at;
    let owner_end = rdata.checked_sub(10)?;
    if packet.get(owner_end..owner_end + 2)? != TYPE_TSIG.to_be_bytes() || end > packet.len() {
        return None;
    }
    let key_name = lower(packet.get(start..owner_end)?)?;
    // The algorithm name must end inside the record, not just inside the packet.
    let alg_end = name_end(packet, rdata).filter(|&alg_end| alg_end <= end)?;
    let algorithm = lower(packet.get(rdata..alg_end)?)?;
    let r = &packet[alg_end..end];
    let time_signed = u64::from_be_bytes([
        0,
        0,
        *r.first()?,
        *r.get(1)?,
        *r.get(2)?,
        *r.get(3)?,
        *r.get(4)?,
        *r.get(5)?,
    ]);
    let fudge = u16::from_be_bytes([*r.get(6)?, *r.get(7)?]);
    let mac_len = u16::from_be_bytes([*r.get(8)?, *r.get(9)?]) as usize;
    let mac = r.get(10..10 + mac_len)?;
    let original_id = u16::from_be_bytes([*r.get(10 + mac_len)?, *r.get(11 + mac_len)?]);
    // Error, other length and other data end the RDATA exactly: no field may overrun it,
    // and nothing may follow.
    let other_len = usize::from(u16::from_be_bytes([*r.get(14 + mac_len)?, *r.get(15 + mac_len)?]));
    if r.len() != 16 + mac_len + other_len {
        return None;
    }
    Some(Found {
        start,
        key_name,
        algorithm,
        time_signed,
        fudge,
        mac,
        original_id,
    })
}

/// A name in lower-case wire form; `None` if it is compressed (TSIG names never are).
fn lower(wire: &[u8]) -> Option<Vec<u8>> {
    let mut pos = 0;
    while pos < wire.len() {
        let len = wire[pos];
        if len & 0xC0 != 0 {
            return None;
        }
        pos += 1 + len as usize;
    }
    Some(wire.iter().map(u8::to_ascii_lowercase).collect())
}

/// Signs `query` as a client would at `time` (for tests of the handler).
#[cfg(test)]
pub(crate) fn sign_request(key: &Key, query: &mut Vec<u8>, time: u64) {
    let mut mac = HmacSha256::new_from_slice(&key.secret).expect("HMAC takes keys of any length");
    mac.update(query.as_slice());
    variables(&mut mac, &key.name, time, FUDGE, 0, &[]);
    let digest = mac.finalize().into_bytes();
    let id = u16::from_be_bytes([query[0], query[1]]);
    append_tsig(query, &key.name, time, &digest, id, 0, &[]);
}

#[cfg(test)]
mod tests;
