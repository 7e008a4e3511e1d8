//! A stub lookup against one named server, for `stackdns lookup`: one question over UDP (with
//! EDNS), asked again over TCP when the answer comes back truncated. Never the system
//! resolver: the server is always given.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};

/// What the server answered, in presentation form.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`…
    pub rcode: String,
    pub authoritative: bool,
    /// Whether the answer came over TCP after a truncated UDP one.
    pub over_tcp: bool,
    pub answers: Vec<String>,
    pub authority: Vec<String>,
    pub additional: Vec<String>,
}

/// Why a lookup got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{0:?} is not a domain name")]
    BadName(String),
    #[error("{0:?} is not a record type (A, AAAA, SRV, SOA, NS, TXT, ANY…)")]
    BadType(String),
    #[error("no answer from {server} within {timeout:?}")]
    Timeout { server: SocketAddr, timeout: Duration },
    #[error("asking {server}: {source}")]
    Io {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the answer from {server} is not a DNS message: {detail}")]
    Malformed { server: SocketAddr, detail: String },
}

/// Asks `server` for `name` `rtype` (a type mnemonic such as `A` or `SRV`).
pub fn lookup(server: SocketAddr, name: &str, rtype: &str, timeout: Duration) -> Result<Lookup, LookupError> {
    let name = Name::from_ascii(name).map_err(|_| LookupError::BadName(name.to_owned()))?;
    let rtype = RecordType::from_str(&rtype.to_ascii_uppercase())
        .map_err(|_| LookupError::BadType(rtype.to_owned()))?;
    let id = random_id();
    let mut query = Message::query();
    query.metadata.id = id;
    query.add_query(Query::query(name, rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    query.set_edns(edns);
    let bytes = query.to_vec().map_err(|e| LookupError::Malformed {
        server,
        detail: e.to_string(),
    })?;
    let io = |source| LookupError::Io { server, source };
    let timed_out = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            LookupError::Timeout { server, timeout }
        }
        _ => LookupError::Io { server, source: e },
    };

    // A server named by its wildcard address (`0.0.0.0:1053`) answers on loopback.
    let server = match server.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], server.port())),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, server.port()))
        }
        _ => server,
    };
    let local: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    let socket = UdpSocket::bind(local).map_err(io)?;
    socket.set_read_timeout(Some(timeout)).map_err(io)?;
    socket.send_to(&bytes, server).map_err(io)?;
    let mut buf = vec![0u8; 65535];
    let reply = loop {
        let (len, from) = socket.recv_from(&mut buf).map_err(timed_out)?;
        // Only the server's answer to this question counts.
        if from == server && len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            break parse(server, &buf[..len])?;
        }
    };
    if !reply.metadata.truncation {
        return Ok(present(reply, false));
    }
    let mut stream = TcpStream::connect_timeout(&server, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).map_err(io)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).map_err(timed_out)?;
    let mut message = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut message).map_err(timed_out)?;
    let reply = parse(server, &message)?;
    if reply.metadata.id != id {
        return Err(LookupError::Malformed {
            server,
            detail: "the answer over TCP is for another question".to_owned(),
        });
    }
    Ok(present(reply, true))
}

fn parse(server: SocketAddr, bytes: &[u8]) -> Result<Message, LookupError> {
    Message::from_vec(bytes).map_err(|e| LookupError::Malformed {
        server,
        detail: e.to_string(),
    })
}

fn present(reply: Message, over_tcp: bool) -> Lookup {
    let text = |records: &[hickory_proto::rr::Record]| records.iter().map(ToString::to_string).collect();
    Lookup {
        rcode: rcode_name(u16::from(reply.metadata.response_code)),
        authoritative: reply.metadata.authoritative,
        over_tcp,
        answers: text(&reply.answers),
        authority: text(&reply.authorities),
        additional: text(&reply.additionals),
    }
}

/// The mnemonic dig prints for a response code.
fn rcode_name(rcode: u16) -> String {
    match rcode {
        0 => "NOERROR".to_owned(),
        1 => "FORMERR".to_owned(),
        2 => "SERVFAIL".to_owned(),
        3 => "NXDOMAIN".to_owned(),
        4 => "NOTIMP".to_owned(),
        5 => "REFUSED".to_owned(),
        9 => "NOTAUTH".to_owned(),
        16 => "BADVERS".to_owned(),
        other => format!("RCODE{other}"),
    }
}

fn random_id() -> u16 {
    let mut bytes = [0u8; 2];
    // A fixed id is fine if randomness fails: only this one question is in flight.
    let _ = getrandom::fill(&mut bytes);
    u16::from_be_bytes(bytes)
}
