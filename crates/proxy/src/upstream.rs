//! Upstream HTTP/1.1 connections owned by one downstream (client) connection.
//!
//! A client that keeps its connection open sends its requests one after another, so the
//! upstream connections it used last are free again when its next request comes: keeping
//! them with the client connection, rather than in the node-wide pool, saves the pool's
//! lock, its checkout and the task hyper-util's pooled client spawns per response to put
//! a connection back. They close when the client connection does (the node-wide pool
//! keeps idle connections for a minute instead). Only HTTP/1.1 clients use this; an
//! HTTP/2 client's requests run at once and share the node-wide pool.

use crate::http::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

/// At most this many idle upstream connections per client connection (a client talking
/// to a Service of more endpoints than this opens a few more connections).
const MAX_IDLE: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why an upstream request failed.
#[derive(Debug)]
pub enum Error {
    /// No connection could be made (refused, unreachable, timed out).
    Connect(std::io::Error),
    /// The connection failed during the exchange, or the response was not HTTP.
    Http(hyper::Error),
    /// From the node-wide pool.
    Pool(hyper_util::client::legacy::Error),
}

impl Error {
    pub fn is_connect(&self) -> bool {
        match self {
            Error::Connect(_) => true,
            Error::Http(_) => false,
            Error::Pool(e) => e.is_connect(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "client error (Connect): {e}"),
            Error::Http(e) => write!(f, "{e}"),
            Error::Pool(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect(_) => None,
            Error::Http(e) => e.source(),
            Error::Pool(e) => e.source(),
        }
    }
}

/// The upstream connections of one client connection, by endpoint.
#[derive(Default)]
pub struct Affine {
    idle: Mutex<Vec<(SocketAddr, http1::SendRequest<Body>)>>,
}

impl Affine {
    /// Sends `req` (origin-form URI, Host set) to `addr` on a connection of this client's,
    /// or a new one. An Upgrade request gets a connection of its own: after a 101 it is a
    /// byte stream.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, Error> {
        let upgrade = req.headers().contains_key(http::header::UPGRADE);
        if !upgrade {
            while let Some(mut conn) = self.take(addr) {
                // Free once the previous response's body has been read.
                if conn.ready().await.is_err() {
                    continue;
                }
                match conn.try_send_request(req).await {
                    Ok(resp) => {
                        self.put(addr, conn);
                        return Ok(resp);
                    }
                    Err(mut e) => match e.take_message() {
                        // Not sent: the connection closed while idle; try another.
                        Some(r) => req = r,
                        None => return Err(Error::Http(e.into_error())),
                    },
                }
            }
        }
        let mut conn = connect(addr).await?;
        let resp = conn.send_request(req).await.map_err(Error::Http)?;
        if !upgrade {
            self.put(addr, conn);
        }
        Ok(resp)
    }

    fn take(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let i = idle.iter().position(|(a, _)| *a == addr)?;
        Some(idle.swap_remove(i).1)
    }

    fn put(&self, addr: SocketAddr, conn: http1::SendRequest<Body>) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push((addr, conn));
    }
}

async fn connect(addr: SocketAddr) -> Result<http1::SendRequest<Body>, Error> {
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Error::Connect(e)),
            Err(_) => {
                return Err(Error::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            }
        };
    let _ = stream.set_nodelay(true);
    let (send, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::Http)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(send)
}
