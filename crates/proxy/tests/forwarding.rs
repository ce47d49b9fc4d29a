//! The proxy's data path with real sockets on 127.0.0.1: a Service frontend in front of
//! echo backends, over TCP and UDP, through configuration changes.

use corral_proxy::testing::{free_port, one_service, TestProxy};
use corral_proxy::view::Protocol;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A TCP backend that writes `id` then echoes what it reads.
async fn tcp_backend(id: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(id.as_bytes()).await.unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

async fn hello(frontend: SocketAddr) -> String {
    let mut s = TcpStream::connect(frontend).await.unwrap();
    let mut buf = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("the backend answers")
        .unwrap();
    String::from_utf8(buf.to_vec()).unwrap()
}

#[tokio::test]
async fn tcp_spreads_over_endpoints_and_skips_a_dead_one() {
    let a = tcp_backend("aa").await;
    let b = tcp_backend("bb").await;
    let dead = free_port();
    let fe = free_port();
    let mut p = TestProxy::new();
    p.apply(&one_service(fe, Protocol::Tcp, &[a, b, dead]));
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..9 {
        *seen.entry(hello(fe).await).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| *n >= 3), "round robin: {seen:?}");
}

#[tokio::test]
async fn no_endpoints_resets_at_once() {
    let fe = free_port();
    let mut p = TestProxy::new();
    p.apply(&one_service(fe, Protocol::Tcp, &[]));
    let mut s = TcpStream::connect(fe).await.unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .expect("the proxy does not leave the client hanging");
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_configuration_change_keeps_established_connections() {
    let a = tcp_backend("aa").await;
    let fe = free_port();
    let mut p = TestProxy::new();
    p.apply(&one_service(fe, Protocol::Tcp, &[a]));
    let mut s = TcpStream::connect(fe).await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    // The Service goes away: the listener closes, the connection stays.
    p.apply(&Default::default());
    s.write_all(b"hi").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
    assert!(
        TcpStream::connect(fe).await.is_err(),
        "nothing listens any more"
    );
    // It comes back on the same port.
    p.apply(&one_service(fe, Protocol::Tcp, &[a]));
    assert_eq!(hello(fe).await, "aa");
}

#[tokio::test]
async fn udp_sessions_relay_both_ways() {
    let backend = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let baddr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = backend.recv_from(&mut buf).await.unwrap();
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            backend.send_to(&reply, from).await.unwrap();
        }
    });
    let fe = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let mut p = TestProxy::new();
    p.apply(&one_service(fe, Protocol::Udp, &[baddr]));
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(fe).await.unwrap();
    let mut buf = [0u8; 1500];
    for msg in ["one", "two"] {
        client.send(msg.as_bytes()).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .expect("a reply through the proxy")
            .unwrap();
        assert_eq!(&buf[..n], format!("echo:{msg}").as_bytes());
    }
}
