//! DNS over QUIC (RFC 9250): hickory-server's listener, with one [`RequestHandler`] that hands
//! every message to [`handler::handle_message`], so it answers exactly what UDP and TCP answer.
//!
//! hickory-server parses each request and encodes each response itself, so the reply our
//! handler wrote is read back into hickory's types and re-encoded. A signed reply is signed
//! here, over that encoding, since a TSIG MAC covers the exact bytes sent. Zone transfers are
//! refused on DoQ (one response per request); they are served over TCP and TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::TSIG;
use hickory_server::proto::rr::{RData, Record};
use hickory_server::proto::serialize::binary::{BinDecoder, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponseBuilder, Queries};

use super::answer::Scratch;
use super::handler::{self, Context, Single};
use super::stats::Channel;
use super::tls::Certificates;
use super::tsig::Signer;
use crate::snapshot::SnapshotHandle;

/// How long a DoQ connection may wait for a request (hickory's own 5 s bounds a handshake).
const IDLE_TIMEOUT: Duration = super::tcp::IDLE_TIMEOUT;

/// The running DoQ listener.
pub struct Doq {
    server: hickory_server::Server<Adapter>,
    pub addr: SocketAddr,
}

impl Doq {
    /// Binds `addr` (UDP) and starts the listener.
    pub async fn start(
        addr: SocketAddr,
        certificates: &Arc<Certificates>,
        snapshots: SnapshotHandle,
        context: Arc<Context>,
    ) -> Result<Self, std::io::Error> {
        let mut server = hickory_server::Server::new(Adapter { snapshots, context });
        let socket = tokio::net::UdpSocket::bind(addr).await?;
        let addr = socket.local_addr()?;
        server.register_quic_listener(socket, IDLE_TIMEOUT, certificates.clone())?;
        Ok(Self { server, addr })
    }

    /// Stops accepting and waits for the connections' tasks.
    pub async fn stop(mut self) {
        if let Err(e) = self.server.shutdown_gracefully().await {
            tracing::warn!(error = %e, "the DoQ listener ended with an error");
        }
    }
}

/// hickory-server's handler: our handler behind it.
struct Adapter {
    snapshots: SnapshotHandle,
    context: Arc<Context>,
}

#[async_trait::async_trait]
impl RequestHandler for Adapter {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut out = Vec::new();
        let single = {
            let snapshot = self.snapshots.load();
            handler::handle_message(
                request.as_slice(),
                request.src().ip(),
                Channel::Quic,
                &snapshot,
                &self.context,
                &mut Scratch::default(),
                self.context.counters.shared(),
                &mut out,
            )
        };
        let Single::Reply(signer) = single else {
            return not_sent(request);
        };
        match send(request, &out, signer, &mut response_handle).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, peer = %request.src(), "DoQ response not sent");
                not_sent(request)
            }
        }
    }
}

/// The summary hickory logs for a request that got no response (as hickory's own: SERVFAIL).
fn not_sent(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::new(request.metadata.id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// Why a reply could not be sent.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("our reply does not decode: {0}")]
    Decode(String),
    #[error("cannot encode the reply: {0}")]
    Encode(String),
    #[error("{0}")]
    Net(String),
}

/// Sends `reply` (our encoding) through `handle`, signed by `signer` over hickory's encoding.
async fn send<R: ResponseHandler>(
    request: &Request,
    reply: &[u8],
    signer: Option<Signer>,
    handle: &mut R,
) -> Result<ResponseInfo, SendError> {
    let mut message = Message::from_vec(reply).map_err(|e| SendError::Decode(e.to_string()))?;
    // A TSIG error reply carries its record already, over a question hickory copies verbatim.
    let carried = take_tsig(&mut message);
    // A header-only reply (FORMERR, NOTIMP, a TSIG error) has no question: keep it so.
    let empty = Queries::read(&mut BinDecoder::new(&[]), 0).map_err(|e| SendError::Encode(e.to_string()))?;
    let queries = if message.queries.is_empty() {
        &empty
    } else {
        &request.queries
    };
    let build = || {
        MessageResponseBuilder::new(queries, message.edns.as_ref()).build(
            message.metadata,
            message.answers.iter(),
            message.authorities.iter(),
            std::iter::empty(),
            message.additionals.iter(),
        )
    };
    let mut response = build();
    if let Some(mut signer) = signer {
        let mut signed = Vec::with_capacity(reply.len() + signer.reserve());
        build()
            .destructive_emit(&mut BinEncoder::new(&mut signed))
            .map_err(|e| SendError::Encode(e.to_string()))?;
        signer.sign(&mut signed);
        let mut signed = Message::from_vec(&signed).map_err(|e| SendError::Decode(e.to_string()))?;
        let signature = take_tsig(&mut signed)
            .ok_or_else(|| SendError::Decode("the signed reply has no TSIG".to_owned()))?;
        response.set_signature(signature);
    } else if let Some(signature) = carried {
        response.set_signature(signature);
    }
    handle
        .send_response(response)
        .await
        .map_err(|e| SendError::Net(e.to_string()))
}

/// The TSIG record at the end of `message`'s additional section, taken out of it: hickory
/// (without its DNSSEC features) reads it as an ordinary record, but must write it last.
fn take_tsig(message: &mut Message) -> Option<Box<Record<TSIG>>> {
    if !matches!(message.additionals.last().map(|r| &r.data), Some(RData::TSIG(_))) {
        return None;
    }
    let record = message.additionals.pop()?;
    record
        .map(|data| match data {
            RData::TSIG(tsig) => Some(tsig),
            _ => None,
        })
        .map(Box::new)
}
