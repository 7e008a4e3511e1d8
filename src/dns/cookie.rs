//! DNS cookies (RFC 7873) with the interoperable server cookie of RFC 9018.
//!
//! A query carrying a COOKIE option gets one back: its client cookie and a fresh server cookie,
//! `version 1 | reserved | timestamp | SipHash-2-4(client cookie | version | reserved |
//! timestamp | client address)` under the current secret. A server cookie in a query is valid
//! when it hashes right under the current or the previous secret and its timestamp is at most
//! an hour old and at most five minutes ahead (RFC 9018 §4.3). A client with a valid cookie has
//! proved it receives answers at its address, so response rate limiting lets it through.
//!
//! The secrets are derived from one master secret per rotation period, so they rotate on their
//! own, the previous one is still accepted for a whole period (longer than a cookie lives), and
//! every server given the same `--cookie-secret` makes and accepts the same cookies.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use siphasher::sip::SipHasher24;

/// The COOKIE option code (RFC 7873 §4).
pub const OPTION_COOKIE: u16 = 10;
/// The BADCOOKIE extended rcode (RFC 7873 §8).
pub const BADCOOKIE: u16 = 23;
pub const CLIENT_COOKIE_LEN: usize = 8;
/// Our server cookies: version, reserved, timestamp, hash.
pub const SERVER_COOKIE_LEN: usize = 16;
/// The COOKIE option we write: code, length, client cookie, server cookie.
pub const OPTION_LEN: usize = 4 + CLIENT_COOKIE_LEN + SERVER_COOKIE_LEN;

/// How long a server cookie is accepted after it was made, and how far ahead of our clock
/// (RFC 9018 §4.3).
const LIFETIME: u32 = 3600;
const AHEAD: u32 = 300;
/// How often the secret changes: at least a cookie's lifetime, so that a cookie made just
/// before a rotation is still checked against the previous secret until it expires.
pub const ROTATION: Duration = Duration::from_secs(86_400);

/// The secrets of one rotation period, and of the one before.
struct Secrets {
    period: u64,
    current: [u8; 16],
    previous: [u8; 16],
}

/// Makes and checks server cookies; shared by every transport.
pub struct Cookies {
    master: [u8; 32],
    secrets: ArcSwap<Secrets>,
}

/// What a query's COOKIE option got: the option for the reply, and whether the server cookie
/// it carried was one of ours and still good.
pub struct Reply {
    pub option: [u8; OPTION_LEN],
    pub valid: bool,
}

impl Cookies {
    /// Cookies under `master` (several servers given the same one accept each other's).
    pub fn new(master: [u8; 32]) -> Self {
        let period = period_of(super::unix_now());
        Self {
            secrets: ArcSwap::from_pointee(secrets_of(&master, period)),
            master,
        }
    }

    /// Checks the COOKIE option data `option` (8 bytes, or 16 to 40: `wire::parse` checked)
    /// from `peer` and makes the option of the reply.
    pub fn reply(&self, option: &[u8], peer: IpAddr) -> Reply {
        self.reply_at(option, peer, super::unix_now())
    }

    fn reply_at(&self, option: &[u8], peer: IpAddr, now: u64) -> Reply {
        let secrets = self.secrets_at(now);
        let client: [u8; CLIENT_COOKIE_LEN] = option
            .get(..CLIENT_COOKIE_LEN)
            .and_then(|c| c.try_into().ok())
            .unwrap_or_default();
        let valid = option.len() == CLIENT_COOKIE_LEN + SERVER_COOKIE_LEN
            && [&secrets.current, &secrets.previous]
                .into_iter()
                .any(|secret| valid_at(secret, &option[..CLIENT_COOKIE_LEN], &option[8..], peer, now));
        let timestamp = now as u32; // RFC 1982 serial arithmetic on the low 32 bits.
        let mut reply = [0u8; OPTION_LEN];
        reply[..2].copy_from_slice(&OPTION_COOKIE.to_be_bytes());
        reply[2..4].copy_from_slice(&((CLIENT_COOKIE_LEN + SERVER_COOKIE_LEN) as u16).to_be_bytes());
        reply[4..12].copy_from_slice(&client);
        reply[12..].copy_from_slice(&server_cookie(&secrets.current, &client, timestamp, peer));
        Reply { option: reply, valid }
    }

    /// This period's secrets, derived once per period by whichever query notices first.
    fn secrets_at(&self, now: u64) -> Arc<Secrets> {
        let period = period_of(now);
        let secrets = self.secrets.load_full();
        if secrets.period == period {
            return secrets;
        }
        let fresh = Arc::new(secrets_of(&self.master, period));
        self.secrets.store(fresh.clone());
        fresh
    }
}

fn secrets_of(master: &[u8; 32], period: u64) -> Secrets {
    Secrets {
        period,
        current: derive(master, period),
        previous: derive(master, period.wrapping_sub(1)),
    }
}

/// The secret of rotation period `period`: HMAC-SHA256 of the period under the master secret.
fn derive(master: &[u8; 32], period: u64) -> [u8; 16] {
    let mut mac = <Hmac<Sha256>>::new_from_slice(master).expect("HMAC takes keys of any length");
    mac.update(b"stackdns server cookie secret");
    mac.update(&period.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let mut secret = [0u8; 16];
    secret.copy_from_slice(&digest[..16]);
    secret
}

fn period_of(now: u64) -> u64 {
    now / ROTATION.as_secs()
}

/// The server cookie of RFC 9018 §4.2 for `client` from `peer`, made at `timestamp`.
fn server_cookie(secret: &[u8; 16], client: &[u8], timestamp: u32, peer: IpAddr) -> [u8; SERVER_COOKIE_LEN] {
    let mut cookie = [0u8; SERVER_COOKIE_LEN];
    cookie[0] = 1; // Version; the three reserved bytes stay zero.
    cookie[4..8].copy_from_slice(&timestamp.to_be_bytes());
    // Client cookie (8) | version, reserved, timestamp (8) | client address (4 or 16).
    let mut input = [0u8; 32];
    input[..8].copy_from_slice(client);
    input[8..16].copy_from_slice(&cookie[..8]);
    let len = match crate::edge::canonical(peer) {
        IpAddr::V4(v4) => {
            input[16..20].copy_from_slice(&v4.octets());
            20
        }
        IpAddr::V6(v6) => {
            input[16..32].copy_from_slice(&v6.octets());
            32
        }
    };
    let hash = SipHasher24::new_with_key(secret).hash(&input[..len]);
    cookie[8..].copy_from_slice(&hash.to_le_bytes());
    cookie
}

/// Whether `server` is the cookie we would have made for `client` under `secret`, at a
/// timestamp no more than an hour back and five minutes ahead.
fn valid_at(secret: &[u8; 16], client: &[u8], server: &[u8], peer: IpAddr, now: u64) -> bool {
    if server.len() != SERVER_COOKIE_LEN || server[0] != 1 {
        return false;
    }
    let timestamp = u32::from_be_bytes([server[4], server[5], server[6], server[7]]);
    let age = (now as u32).wrapping_sub(timestamp);
    let fresh = age <= LIFETIME || age.wrapping_neg() <= AHEAD;
    // The reserved bytes are part of the hash input; we always make them zero.
    fresh && server_cookie(secret, client, timestamp, peer) == server
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn the_server_cookie_of_rfc_9018_appendix_a_1() {
        let secret: [u8; 16] = hex("e5e973e5a6b2a43f48e7dc849e37bfcf")
            .try_into()
            .expect("16 bytes");
        let client = hex("2464c4abcf10c957");
        // Wed Jun  5 10:53:05 UTC 2019.
        let cookie = server_cookie(
            &secret,
            &client,
            1_559_731_985,
            "198.51.100.100".parse().expect("ip"),
        );
        assert_eq!(cookie.to_vec(), hex("010000005cf79f111f8130c3eee29480"));
    }

    fn cookies() -> Cookies {
        Cookies::new([7; 32])
    }

    fn full(reply: &Reply) -> Vec<u8> {
        reply.option[4..].to_vec()
    }

    #[test]
    fn a_cookie_echoed_back_is_valid_from_the_same_address_only() {
        let cookies = cookies();
        let peer: IpAddr = "192.0.2.1".parse().expect("ip");
        let now = 1_800_000_000;
        let first = cookies.reply_at(&[1, 2, 3, 4, 5, 6, 7, 8], peer, now);
        assert!(!first.valid, "only a client cookie");
        assert_eq!(&first.option[..4], &[0, 10, 0, 24]);
        assert_eq!(&first.option[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let echoed = full(&first);
        assert!(cookies.reply_at(&echoed, peer, now + 60).valid);
        assert!(
            !cookies
                .reply_at(&echoed, "192.0.2.2".parse().expect("ip"), now)
                .valid
        );
        let mut tampered = echoed.clone();
        tampered[10] ^= 1;
        assert!(!cookies.reply_at(&tampered, peer, now).valid);
        // Another server's cookie (another master) is not ours.
        assert!(!Cookies::new([8; 32]).reply_at(&echoed, peer, now).valid);
    }

    #[test]
    fn cookies_expire_after_an_hour_and_may_not_come_from_the_future() {
        let cookies = cookies();
        let peer: IpAddr = "2001:db8::1".parse().expect("ip");
        let now = 1_800_000_000;
        let echoed = full(&cookies.reply_at(&[9; 8], peer, now));
        assert!(cookies.reply_at(&echoed, peer, now + 3600).valid);
        assert!(!cookies.reply_at(&echoed, peer, now + 3601).valid);
        assert!(
            cookies.reply_at(&echoed, peer, now - 300).valid,
            "five minutes of clock skew"
        );
        assert!(!cookies.reply_at(&echoed, peer, now - 301).valid);
    }

    #[test]
    fn a_rotation_keeps_the_previous_secret() {
        let cookies = cookies();
        let peer: IpAddr = "192.0.2.1".parse().expect("ip");
        let period = ROTATION.as_secs();
        let just_before = 20_000 * period + period - 10;
        let echoed = full(&cookies.reply_at(&[3; 8], peer, just_before));
        // After the rotation, the cookie made under the old secret is still good for its hour.
        assert!(cookies.reply_at(&echoed, peer, just_before + 600).valid);
        // A new one is made under the new secret.
        let renewed = full(&cookies.reply_at(&echoed, peer, just_before + 600));
        assert_ne!(renewed[8..], echoed[8..]);
        assert!(cookies.reply_at(&renewed, peer, just_before + 700).valid);
    }
}
