//! The one entry point for a DNS message, whatever carried it: [`handle`] parses the packet
//! once and decides what it gets, so the transports only move bytes.
//!
//! The decisions, in the order the RFCs give them:
//!
//! 1. not even a header, or a response: nothing (RFC 1035 §4.1.1);
//! 2. an opcode other than QUERY that cannot be read as a query: NOTIMP, header only, whatever
//!    the section counts say (RFC 1035 §4.1.1, RFC 6895 §2); a QUERY that cannot be read
//!    (QDCOUNT not 1, a broken name or record): FORMERR, header only;
//! 3. a TSIG record (found by the parse, which has made sure it is the last record): FORMERR
//!    if its fields do not fill its RDATA exactly, else BADKEY, BADSIG or BADTIME as RFC 8945 §5.2 says;
//!    once verified, every reply or transfer message is signed, with room kept for the record;
//! 4. a transfer of the zone (AXFR/IXFR, class IN or ANY, EDNS version 0) from an allowed
//!    address or with a valid signature: over TCP, or TLS 1.3 (RFC 9103), a [`TransferJob`]
//!    to stream; over UDP an IXFR gets the increment if it fits one datagram, else the SOA
//!    alone (RFC 1995 §2); over DoH, DoQ or TLS 1.2, REFUSED;
//! 5. anything else: [`answer::answer`], which picks BADVERS, NOTIMP, REFUSED or the data;
//!    a query with a COOKIE option gets one back (RFC 7873, [`cookie`](super::cookie)).
//!
//! Then, over UDP, response rate limiting ([`rrl`](super::rrl)) may drop the reply or send it
//! truncated; a client with a valid server cookie or a valid TSIG is never limited, and a
//! limited client that sent a cookie gets BADCOOKIE with a fresh one instead of the truncation.

use std::net::IpAddr;
use std::sync::Arc;

use super::answer::{self, Scratch, Transport};
use super::cookie::{self, Cookies};
use super::rrl::{self, Rrl, Verdict};
use super::stats::{self, Channel, Shard};
use super::tsig::{self, Check, Signer};
use super::wire::{self, OPCODE_QUERY, Query, Reject, rcode};
use super::xfr::{self, TransferAcl};
use crate::snapshot::Snapshot;
use crate::zone::rtype;

/// What the transport does with a message after [`handle`].
pub enum Outcome {
    /// Send the reply `handle` wrote into `out`.
    Reply,
    /// Send nothing (not a query); TCP closes the connection.
    Drop,
    /// Stream this zone transfer (TCP only); `out` is left empty.
    Transfer(Box<TransferJob>),
}

/// A zone transfer that may go ahead: everything its builder needs, owned, so it can run on a
/// thread of its own without the packet.
pub struct TransferJob {
    /// The snapshot the transfer reads from start to end.
    pub snapshot: Arc<Snapshot>,
    pub request: xfr::Request,
    /// Signs every message when the request was signed.
    pub signer: Option<Signer>,
}

impl TransferJob {
    /// What the transfer sends, for the logs.
    pub fn kind(&self) -> &'static str {
        self.request.kind(&self.snapshot)
    }

    /// Builds every message of the transfer, signed if the request was, calling `send` with
    /// each; returns the number of records sent.
    pub fn run<E>(self, mut send: impl FnMut(&[u8]) -> Result<(), E>) -> Result<usize, E> {
        let Self {
            snapshot,
            request,
            mut signer,
        } = self;
        let mut signed = Vec::new();
        xfr::transfer(&snapshot, &request, |message| match signer.as_mut() {
            Some(signer) => {
                signed.clear();
                signed.extend_from_slice(message);
                signer.sign(&mut signed);
                send(&signed)
            }
            None => send(message),
        })
    }
}

/// What every transport's handler shares: who may transfer, cookies, rate limiting.
#[derive(Default)]
pub struct Context {
    pub acl: TransferAcl,
    /// `None`: COOKIE options are ignored (`--cookies off`).
    pub cookies: Option<Cookies>,
    /// `None`: no response rate limiting (`--rrl-rate 0`). UDP only.
    pub rrl: Option<Rrl>,
    /// The answer path's counters; [`DnsServer::start`](super::DnsServer::start) gives each UDP
    /// worker a shard.
    pub counters: stats::DnsCounters,
    /// Where transfers and NOTIFY outcomes are counted.
    pub metrics: crate::metrics::Metrics,
}

/// What the request proved about its sender, for rate limiting.
struct Proof {
    /// The question's type as [`stats::qtype_index`] counts it, and the reply's (extended)
    /// rcode.
    qtype: usize,
    rcode: u16,
    /// The COOKIE option of the reply, if the query sent one, and whether its server cookie
    /// was valid.
    cookie: Option<cookie::Reply>,
    dnssec_ok: bool,
    signed: bool,
}

/// Decides what `packet`, received from `peer` over `transport`, gets from `snapshot`: writes
/// the reply into `out` (cleared first) and says what to do with it. Allocation-free for an
/// unsigned query that is not a transfer; `scratch` is the caller's, reused across queries.
/// The message and its reply are counted in `shard`.
#[allow(clippy::too_many_arguments)]
pub fn handle(
    packet: &[u8],
    peer: IpAddr,
    transport: Transport,
    snapshot: &Arc<Snapshot>,
    context: &Context,
    scratch: &mut Scratch,
    shard: &Shard,
    out: &mut Vec<u8>,
) -> Outcome {
    let channel = match transport {
        Transport::Udp => Channel::Udp,
        Transport::Tcp => Channel::Tcp,
        Transport::Tls { .. } => Channel::Tls,
        Transport::Message => Channel::Https,
    };
    let (outcome, mut proof, signer) = respond(packet, peer, transport, snapshot, context, scratch, out);
    shard.request(channel, proof.qtype);
    if let Some(mut signer) = signer {
        signer.sign(out);
    }
    let outcome = match context.rrl.as_ref().filter(|_| transport == Transport::Udp) {
        Some(rrl)
            if matches!(outcome, Outcome::Reply)
                && !proof.signed
                && !proof.cookie.as_ref().is_some_and(|c| c.valid) =>
        {
            match rrl.verdict(peer, out) {
                Verdict::Send => Outcome::Reply,
                Verdict::Drop => Outcome::Drop,
                Verdict::Slip => {
                    match &proof.cookie {
                        Some(cookie) => {
                            answer::bad_cookie(out, proof.dnssec_ok, &cookie.option);
                            proof.rcode = cookie::BADCOOKIE;
                        }
                        None => rrl::slip(out),
                    }
                    Outcome::Reply
                }
            }
        }
        _ => outcome,
    };
    if let Outcome::Reply = outcome {
        shard.response(channel, proof.qtype, proof.rcode, out);
    }
    outcome
}

/// What a transport that carries one response per request (DoH, DoQ) does after
/// [`handle_message`].
pub enum Single {
    /// Send the reply written into `out`, signed by `signer` if the request was signed: the
    /// transport encodes the message itself, and the signature must cover its encoding.
    Reply(Option<Signer>),
    /// Send nothing (not a query).
    Drop,
}

/// [`handle`] for [`Transport::Message`]: the same decisions, but no rate limiting (the
/// transport has a handshake, so the source is not spoofed), no transfers, and the signing
/// left to the caller. Counted in `shard` as having come over `channel`; the size counted is
/// the reply's before the signature.
#[allow(clippy::too_many_arguments)]
pub fn handle_message(
    packet: &[u8],
    peer: IpAddr,
    channel: Channel,
    snapshot: &Arc<Snapshot>,
    context: &Context,
    scratch: &mut Scratch,
    shard: &Shard,
    out: &mut Vec<u8>,
) -> Single {
    let (outcome, proof, signer) = respond(packet, peer, Transport::Message, snapshot, context, scratch, out);
    shard.request(channel, proof.qtype);
    match outcome {
        Outcome::Reply => {
            shard.response(channel, proof.qtype, proof.rcode, out);
            Single::Reply(signer)
        }
        // A transfer is not streamed over a single-message transport: `respond` refuses it.
        Outcome::Drop | Outcome::Transfer(_) => Single::Drop,
    }
}

/// [`handle`] before rate limiting and signing: the reply in `out` is to be signed by the
/// returned signer, if any.
fn respond(
    packet: &[u8],
    peer: IpAddr,
    transport: Transport,
    snapshot: &Arc<Snapshot>,
    context: &Context,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> (Outcome, Proof, Option<Signer>) {
    let acl = &context.acl;
    let mut proof = Proof {
        qtype: stats::QTYPE_NONE,
        rcode: rcode::NOERROR,
        cookie: None,
        dnssec_ok: false,
        signed: false,
    };
    out.clear();
    let query = match wire::parse(packet) {
        Ok(query) => query,
        Err(Reject::Drop) => return (Outcome::Drop, proof, None),
        Err(Reject::Malformed { id, flags }) => {
            // The opcode says how the rest is laid out: under one we do not implement, the
            // message is not malformed as far as we know, it is simply not implemented.
            let rcode = if wire::opcode(flags) == OPCODE_QUERY {
                rcode::FORMERR
            } else {
                rcode::NOTIMP
            };
            answer::header_only(out, id, flags, rcode);
            proof.rcode = rcode;
            return (Outcome::Reply, proof, None);
        }
    };
    proof.qtype = stats::qtype_index(query.qtype);
    let signer = match query.tsig.map(|at| tsig::check(&acl.keys, packet, at)) {
        None | Some(Check::Unsigned) => None,
        Some(Check::Malformed) => {
            answer::header_only(out, query.id, query.flags, rcode::FORMERR);
            proof.rcode = rcode::FORMERR;
            return (Outcome::Reply, proof, None);
        }
        Some(Check::Valid(signer)) => Some(signer),
        Some(Check::Refused(reply)) => {
            out.extend_from_slice(&reply);
            proof.rcode = reply.get(3).map_or(rcode::NOERROR, |b| u16::from(b & 0xF));
            return (Outcome::Reply, proof, None);
        }
    };
    let reserve = signer.as_ref().map_or(0, Signer::reserve);
    proof.signed = signer.is_some();
    proof.dnssec_ok = query.edns.is_some_and(|e| e.dnssec_ok);
    proof.cookie = match (&context.cookies, query.cookie) {
        (Some(cookies), Some(option)) => Some(cookies.reply(option, peer)),
        _ => None,
    };

    // A valid signature allows a transfer from anywhere; otherwise the address must.
    let transfer = xfr::is_transfer(&query)
        && query.lower_qname() == &snapshot.apex[..]
        && (signer.is_some() || acl.allows(peer));
    match transport {
        Transport::Tcp | Transport::Tls { tls13: true } if transfer => {
            let job = TransferJob {
                snapshot: Arc::clone(snapshot),
                request: xfr::Request::new(packet, &query),
                signer,
            };
            return (Outcome::Transfer(Box::new(job)), proof, None);
        }
        Transport::Udp if transfer && query.qtype == rtype::IXFR => {
            ixfr_over_udp(snapshot, packet, &query, reserve, out);
        }
        // AXFR over UDP is REFUSED like any transfer not taken here (over TLS 1.2, DoH, DoQ).
        _ => {
            let options = proof.cookie.as_ref().map_or(&[][..], |c| &c.option[..]);
            proof.rcode = answer::answer(snapshot, &query, transport, reserve, options, scratch, out);
        }
    }
    (Outcome::Reply, proof, signer)
}

/// IXFR over UDP (RFC 1995 §2): the increment itself when the journal has it and it fits one
/// datagram (with `reserve` bytes left for a TSIG), otherwise the current SOA alone, which says
/// "up to date" to a current client and "come back over TCP" to any other.
fn ixfr_over_udp(snapshot: &Snapshot, packet: &[u8], query: &Query<'_>, reserve: usize, out: &mut Vec<u8>) {
    let limit = query.edns.map_or(wire::MIN_UDP_PAYLOAD, |e| {
        e.udp_size.clamp(wire::MIN_UDP_PAYLOAD, answer::MAX_UDP_PAYLOAD)
    }) as usize;
    let mut request = xfr::Request::new(packet, query);
    if request
        .client_serial
        .is_some_and(|c| !xfr::serial_at_least(c, snapshot.serial) && snapshot.journal.since(c).is_some())
    {
        let mut messages = Vec::new();
        let _ = xfr::transfer::<std::convert::Infallible>(snapshot, &request, |m| {
            messages.push(m.to_vec());
            Ok(())
        });
        if let [only] = &messages[..]
            && only.len() + reserve <= limit
        {
            out.clear();
            out.extend_from_slice(only);
            return;
        }
    }
    out.clear();
    request.client_serial = Some(snapshot.serial);
    let _ = xfr::transfer::<std::convert::Infallible>(snapshot, &request, |m| {
        out.extend_from_slice(m);
        Ok(())
    });
}

#[cfg(test)]
mod tests;
