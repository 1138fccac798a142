//! An authoritative DNS server on loopback that serves a fixed [`Zone`].
//!
//! The server is built on hickory-server's [`ServerFuture`] and listens on
//! UDP and TCP on the same port of 127.0.0.1. Point a resolver at
//! [`DnsServer::addr`] to make MX, A, AAAA and CNAME lookups
//! deterministic in tests.

mod zone;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use std::{fmt, io};

use hickory_proto::op::{Edns, Header, MessageType, OpCode, ResponseCode};
use hickory_proto::xfer::Protocol;
use hickory_server::ServerFuture;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use zone::Zone;
use zone::{Fault, Lookup, ZoneTable};

/// Number of free UDP ports tried before giving up on finding one whose TCP
/// port is also free.
const MAX_BIND_ATTEMPTS: usize = 16;

/// Idle time after which the server closes a TCP connection.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time [`DnsServer::shutdown`] waits for the server tasks before aborting them.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest UDP payload advertised in EDNS responses, in bytes.
const MAX_UDP_PAYLOAD: u16 = 1232;

/// A running authoritative DNS server for one [`Zone`].
///
/// The server stops on [`DnsServer::shutdown`] or when the value is dropped.
pub struct DnsServer {
    addr: SocketAddr,
    query_count: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for DnsServer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("DnsServer")
            .field("addr", &self.addr)
            .field("query_count", &self.query_count())
            .finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Starts serving `zone` on UDP and TCP on the same port of 127.0.0.1.
    ///
    /// Fails with `InvalidInput` when a name in the zone is not a valid DNS
    /// name, and with the bind error when no port pair is free after
    /// `MAX_BIND_ATTEMPTS` tries.
    pub async fn start(zone: Zone) -> io::Result<DnsServer> {
        let table = ZoneTable::build(&zone)?;
        let (udp, tcp) = bind_port_pair().await?;
        let addr = udp.local_addr()?;

        let query_count = Arc::new(AtomicUsize::new(0));
        let handler = ZoneHandler {
            table,
            query_count: Arc::clone(&query_count),
        };
        let mut server = ServerFuture::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT);

        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            tokio::select! {
                result = server.block_until_done() => {
                    if let Err(error) = result {
                        tracing::warn!(%addr, %error, "test DNS server stopped with an error");
                    }
                    return;
                }
                _ = stopped => {}
            }
            if let Err(error) = server.shutdown_gracefully().await {
                tracing::warn!(%addr, %error, "test DNS server shutdown failed");
            }
        });
        tracing::info!(%addr, "test DNS server started");

        Ok(DnsServer {
            addr,
            query_count,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Returns the address that serves both UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the number of requests received so far, including those that
    /// got SERVFAIL or no response.
    pub fn query_count(&self) -> usize {
        self.query_count.load(Ordering::SeqCst)
    }

    /// Stops the server and waits for its tasks, aborting them after
    /// `SHUTDOWN_TIMEOUT`.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            // The task may already have ended, so a closed channel is fine.
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut task)
                .await
                .is_err()
        {
            tracing::warn!(addr = %self.addr, "test DNS server did not stop in time, aborting it");
            task.abort();
        }
        tracing::info!(addr = %self.addr, "test DNS server stopped");
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        // Aborting the task drops the `ServerFuture`, whose `JoinSet` aborts
        // the socket and connection tasks.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds a UDP socket on a free port of 127.0.0.1 and a TCP listener on the
/// same port.
async fn bind_port_pair() -> io::Result<(UdpSocket, TcpListener)> {
    let mut last_error = None;
    for _ in 0..MAX_BIND_ATTEMPTS {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(error) => {
                tracing::debug!(port, %error, "TCP port taken, trying another UDP port");
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free UDP and TCP port pair found")))
}

/// Request handler that looks up queries in a [`ZoneTable`].
struct ZoneHandler {
    table: ZoneTable,
    query_count: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RequestHandler for ZoneHandler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.query_count.fetch_add(1, Ordering::SeqCst);

        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(request_edns) = request.edns() {
            let mut edns = Edns::new();
            edns.set_version(0);
            edns.set_max_payload(request_edns.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            builder.edns(edns);
        }

        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            let response = builder.error_msg(request.header(), ResponseCode::NotImp);
            return send(&mut response_handle, response, request).await;
        }
        let info = match request.request_info() {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, "test DNS server rejected a malformed query");
                let response = builder.error_msg(request.header(), ResponseCode::FormErr);
                return send(&mut response_handle, response, request).await;
            }
        };

        let name = info.query.name();
        let query_type = info.query.query_type();
        if request.protocol() == Protocol::Udp && self.table.truncates_udp(&name.into()) {
            let mut header = Header::response_from_request(request.header());
            header.set_authoritative(true);
            header.set_truncated(true);
            let response = builder.build_no_records(header);
            return send(&mut response_handle, response, request).await;
        }
        let lookup = self.table.lookup(&name.into(), query_type);
        tracing::debug!(%name, %query_type, ?lookup, "test DNS server query");

        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        match lookup {
            Lookup::Answer(answers) => {
                let response = builder.build(header, answers.iter(), [], [], []);
                send(&mut response_handle, response, request).await
            }
            Lookup::NxDomain => {
                // NOTE: negative responses carry no SOA record, so resolvers
                // cannot cache them with a negative TTL (RFC 2308).
                header.set_response_code(ResponseCode::NXDomain);
                let response = builder.build_no_records(header);
                send(&mut response_handle, response, request).await
            }
            Lookup::Fault(Fault::ServFail) => {
                let response = builder.error_msg(request.header(), ResponseCode::ServFail);
                send(&mut response_handle, response, request).await
            }
            Lookup::Fault(Fault::NoResponse) => {
                // Nothing is sent, so the client has to time out.
                let mut header = Header::response_from_request(request.header());
                header.set_response_code(ResponseCode::NoError);
                header.into()
            }
        }
    }
}

/// Sends `response` and returns its header, or a SERVFAIL header when
/// sending fails.
async fn send<'a, R: ResponseHandler>(
    response_handle: &mut R,
    response: hickory_server::authority::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::warn!(%error, src = %request.src(), "test DNS server failed to send a response");
            let mut header = Header::response_from_request(request.header());
            header.set_response_code(ResponseCode::ServFail);
            header.into()
        }
    }
}
