//! Network fixtures: a TCP proxy that can freeze (stop forwarding the server's bytes while
//! keeping the sockets open) or cut its connections, and an HTTP server that answers every
//! request with 503 a few times and then 307 to a master, as a non-leading Mesos master does.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

struct Connection {
    frozen: Arc<AtomicBool>,
    pumps: [JoinHandle<()>; 2],
}

/// A TCP proxy in front of `upstream`.
pub struct Proxy {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<Connection>>>,
    acceptor: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Frozen: the bytes are swallowed, the connection stays open.
        if !frozen.load(Ordering::SeqCst) && to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let connections: Arc<Mutex<Vec<Connection>>> = Arc::default();
        let list = connections.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(false));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let up = tokio::spawn(pump(
                    client_read,
                    server_write,
                    Arc::new(AtomicBool::new(false)),
                ));
                let down = tokio::spawn(pump(server_read, client_write, frozen.clone()));
                list.lock().unwrap().push(Connection {
                    frozen,
                    pumps: [up, down],
                });
            }
        });
        Proxy {
            addr,
            connections,
            acceptor,
        }
    }

    /// Stops forwarding the server's bytes on every current connection (new ones are fine).
    pub fn freeze(&self) {
        for connection in self.connections.lock().unwrap().iter() {
            connection.frozen.store(true, Ordering::SeqCst);
        }
    }

    /// Closes every current connection.
    pub fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            for pump in connection.pumps {
                pump.abort();
            }
        }
    }

    /// Connections accepted and still tracked.
    pub fn connections(&self) -> usize {
        self.connections.lock().unwrap().len()
    }
}

/// A server that answers `unavailable` requests with 503, then every request with
/// `307 Location: //<leader>/api/v1/scheduler`.
pub struct Redirector {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl Drop for Redirector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Redirector {
    pub async fn start(leader: SocketAddr, unavailable: usize) -> Redirector {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let app = axum::Router::new().fallback(move || {
            let count = count.clone();
            async move {
                let n = count.fetch_add(1, Ordering::SeqCst);
                if n < unavailable {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                let location = format!("//{leader}/api/v1/scheduler");
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, location)],
                )
                    .into_response()
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Redirector {
            addr,
            requests,
            server,
        }
    }
}

/// A loopback address nothing listens on (bound, then released).
pub fn dead_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("address")
}
