//! The compact binary form of a container record, as the redb engine stores it.
//!
//! Containers are nearly all of what is stored (a million rows on a large platform), and
//! reading them is most of a start-up: JSON took about 1.5 µs a row to parse, this form a
//! fraction of that, and a third of the bytes. Every label is validated again on the way in,
//! as JSON rows were, so a corrupted row is reported rather than served.
//!
//! ```text
//! u8 version (1)
//! label user, stack, name, node, service      each: u8 length, bytes
//! u8 address kind (0 none, 4, 6), then 4 or 16 bytes
//! u16 port count, then per port: u16 container port, u8 flags (1 host port, 2 udp), u16 host port
//! u64 generation
//! u8 flags (1 running, 2 ready, 4 placed, 8 detail follows, 16 stop time follows)
//! [u16 length, UTF-8 bytes]                   the detail, if flagged
//! [u64 seconds since the Unix epoch]          when it stopped, if flagged (schema 3)
//! ```
//!
//! All integers are big-endian. A row that starts with `{` is the JSON of earlier versions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{Container, ContainerKey, InvalidLabel, Label, Port, Protocol};

const VERSION: u8 = 1;

const PORT_HOST: u8 = 1;
const PORT_UDP: u8 = 2;

const RUNNING: u8 = 1;
const READY: u8 = 2;
const PLACED: u8 = 4;
const DETAIL: u8 = 8;
const STOPPED_AT: u8 = 16;

/// Why bytes are not a container record.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("the record ends inside its {0}")]
    Truncated(&'static str),
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("unknown {field} code {code}")]
    Code { field: &'static str, code: u8 },
    #[error(transparent)]
    Label(#[from] InvalidLabel),
    #[error("the detail is not UTF-8")]
    Detail,
    #[error("{0} bytes follow the record")]
    Trailing(usize),
    #[error("the {0} is too long to store")]
    TooLong(&'static str),
}

/// Appends `c`'s binary form to `out`.
pub fn encode_container(c: &Container, out: &mut Vec<u8>) -> Result<(), CodecError> {
    out.push(VERSION);
    for label in [&c.key.user, &c.key.stack, &c.key.name, &c.node, &c.service] {
        // A label is at most 63 bytes (model::Label).
        out.push(label.as_str().len() as u8);
        out.extend_from_slice(label.as_str().as_bytes());
    }
    match c.address {
        None => out.push(0),
        Some(IpAddr::V4(a)) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        Some(IpAddr::V6(a)) => {
            out.push(6);
            out.extend_from_slice(&a.octets());
        }
    }
    let ports = u16::try_from(c.ports.len()).map_err(|_| CodecError::TooLong("port list"))?;
    out.extend_from_slice(&ports.to_be_bytes());
    for p in &c.ports {
        out.extend_from_slice(&p.container_port.to_be_bytes());
        let mut flags = 0;
        if p.host_port.is_some() {
            flags |= PORT_HOST;
        }
        if p.protocol == Protocol::Udp {
            flags |= PORT_UDP;
        }
        out.push(flags);
        out.extend_from_slice(&p.host_port.unwrap_or(0).to_be_bytes());
    }
    out.extend_from_slice(&c.generation.to_be_bytes());
    let mut flags = 0;
    for (set, bit) in [
        (c.running, RUNNING),
        (c.ready, READY),
        (c.placed, PLACED),
        (c.detail.is_some(), DETAIL),
        (c.stopped_at.is_some(), STOPPED_AT),
    ] {
        if set {
            flags |= bit;
        }
    }
    out.push(flags);
    if let Some(detail) = &c.detail {
        let len = u16::try_from(detail.len()).map_err(|_| CodecError::TooLong("detail"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(detail.as_bytes());
    }
    if let Some(at) = c.stopped_at {
        out.extend_from_slice(&at.to_be_bytes());
    }
    Ok(())
}

/// Reads [`encode_container`]'s form.
pub fn decode_container(bytes: &[u8]) -> Result<Container, CodecError> {
    let mut r = Reader { bytes, pos: 0 };
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(CodecError::Version(version));
    }
    let key = ContainerKey {
        user: r.label("user")?,
        stack: r.label("stack")?,
        name: r.label("container")?,
    };
    let node = r.label("node")?;
    let service = r.label("service")?;
    let address = match r.u8("address")? {
        0 => None,
        4 => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(r.take(4, "address")?).map_err(|_| CodecError::Truncated("address"))?,
        ))),
        6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(r.take(16, "address")?).map_err(|_| CodecError::Truncated("address"))?,
        ))),
        code => {
            return Err(CodecError::Code {
                field: "address",
                code,
            });
        }
    };
    let count = r.u16("ports")?;
    let mut ports = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let container_port = r.u16("port")?;
        let flags = r.u8("port")?;
        if flags & !(PORT_HOST | PORT_UDP) != 0 {
            return Err(CodecError::Code {
                field: "port flags",
                code: flags,
            });
        }
        let host = r.u16("port")?;
        ports.push(Port {
            container_port,
            host_port: (flags & PORT_HOST != 0).then_some(host),
            protocol: if flags & PORT_UDP != 0 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
        });
    }
    let generation = u64::from_be_bytes(
        r.take(8, "generation")?
            .try_into()
            .map_err(|_| CodecError::Truncated("generation"))?,
    );
    let flags = r.u8("flags")?;
    if flags & !(RUNNING | READY | PLACED | DETAIL | STOPPED_AT) != 0 {
        return Err(CodecError::Code {
            field: "flags",
            code: flags,
        });
    }
    let detail = if flags & DETAIL != 0 {
        let len = r.u16("detail")?;
        let text = r.take(usize::from(len), "detail")?;
        Some(String::from_utf8(text.to_vec()).map_err(|_| CodecError::Detail)?)
    } else {
        None
    };
    let stopped_at = if flags & STOPPED_AT != 0 {
        let at = r.take(8, "stop time")?;
        Some(u64::from_be_bytes(
            at.try_into().map_err(|_| CodecError::Truncated("stop time"))?,
        ))
    } else {
        None
    };
    if r.pos != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - r.pos));
    }
    Ok(Container {
        key,
        node,
        service,
        address,
        ports,
        generation,
        running: flags & RUNNING != 0,
        ready: flags & READY != 0,
        detail,
        placed: flags & PLACED != 0,
        stopped_at,
    })
}

struct Reader<'b> {
    bytes: &'b [u8],
    pos: usize,
}

impl<'b> Reader<'b> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'b [u8], CodecError> {
        let out = self
            .bytes
            .get(self.pos..self.pos + n)
            .ok_or(CodecError::Truncated(what))?;
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn label(&mut self, field: &'static str) -> Result<Label, CodecError> {
        let len = usize::from(self.u8(field)?);
        let bytes = self.take(len, field)?;
        // Non-UTF-8 bytes cannot be a label; parse says why in the same words as for input.
        let text = std::str::from_utf8(bytes).unwrap_or("\u{fffd}");
        Ok(Label::parse(field, text)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(s: &str) -> Label {
        Label::parse("test", s).expect("label")
    }

    fn container() -> Container {
        Container {
            key: ContainerKey {
                user: label("honeniq"),
                stack: label("quickstart-ruby"),
                name: label("web-1"),
            },
            node: label("node-1"),
            service: label("web"),
            address: Some("fd00::17".parse().expect("ip")),
            ports: vec![
                Port {
                    container_port: 80,
                    host_port: Some(32768),
                    protocol: Protocol::Tcp,
                },
                Port {
                    container_port: 53,
                    host_port: None,
                    protocol: Protocol::Udp,
                },
            ],
            generation: 7,
            running: true,
            ready: false,
            detail: Some("health check failed: connection refused".into()),
            placed: true,
            stopped_at: None,
        }
    }

    fn encoded(c: &Container) -> Vec<u8> {
        let mut out = Vec::new();
        encode_container(c, &mut out).expect("encodes");
        out
    }

    #[test]
    fn round_trips() {
        let c = container();
        assert_eq!(decode_container(&encoded(&c)).expect("decodes"), c);
        let plain = Container {
            address: Some("10.0.0.1".parse().expect("ip")),
            ports: vec![],
            detail: None,
            running: false,
            ready: true,
            placed: false,
            ..container()
        };
        assert_eq!(decode_container(&encoded(&plain)).expect("decodes"), plain);
        let tombstone = Container {
            stopped_at: Some(1_800_000_000),
            ..plain.clone()
        };
        assert_eq!(
            decode_container(&encoded(&tombstone)).expect("decodes"),
            tombstone
        );
        let none = Container {
            address: None,
            ..plain.clone()
        };
        assert_eq!(decode_container(&encoded(&none)).expect("decodes"), none);
        assert!(encoded(&none).len() < serde_json::to_vec(&none).expect("json").len() / 2);
    }

    #[test]
    fn every_damaged_record_is_an_error() {
        let bytes = encoded(&Container {
            stopped_at: Some(1_800_000_000),
            ..container()
        });
        for cut in 0..bytes.len() {
            assert!(decode_container(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode_container(&longer), Err(CodecError::Trailing(1))));
        let mut bad_label = bytes.clone();
        bad_label[2] = b'_';
        let err = decode_container(&bad_label).expect_err("invalid label");
        assert!(err.to_string().contains("user"), "{err}");
        let mut version = bytes;
        version[0] = 9;
        assert!(matches!(decode_container(&version), Err(CodecError::Version(9))));
    }
}
