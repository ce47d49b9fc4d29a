//! What only the etcd backend has: a clear, quick error when etcd cannot be reached, the
//! mapping of corral's unbounded ranges to etcd's, several servers sharing one etcd (each
//! seeing the others' writes, conflicts and compactions), and a watch that survives an etcd
//! restart. Needs `--features etcd`; all but the first need `CORRAL_TEST_ETCD` too. (In a
//! module named `etcd`, like every etcd variant elsewhere, so `cargo test -- etcd` runs them.)
#![cfg(feature = "etcd")]

mod common;

mod etcd {
    use std::time::{Duration, Instant};

    use super::common::{etcd_endpoint, Harness};
    use bytes::Bytes;
    use corral_store::{
        prefix_end, Compare, Error, EtcdOptions, EventKind, Store, TxnOutcome, WatchMessage,
    };
    use futures::StreamExt;

    const WAIT: Duration = Duration::from_secs(10);

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn quiet() -> EtcdOptions {
        EtcdOptions {
            progress_interval: Duration::ZERO,
            ..Default::default()
        }
    }

    async fn connect(endpoint: &str) -> Store {
        Store::connect_etcd(&[endpoint.to_string()], quiet())
            .await
            .unwrap()
    }

    fn revision(o: TxnOutcome) -> i64 {
        match o {
            TxnOutcome::Committed { revision, .. } => revision,
            other => panic!("expected commit, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn unreachable_etcd_is_a_quick_clear_error() {
        let started = Instant::now();
        let opts = EtcdOptions {
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let err = Store::connect_etcd(&["http://127.0.0.1:1".to_string()], opts)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot reach etcd at http://127.0.0.1:1"),
            "{msg}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn unbounded_ranges_cover_the_whole_keyspace() {
        let Some(h) = Harness::etcd("unbounded_ranges_cover_the_whole_keyspace").await else {
            return;
        };
        let _ = h; // holds the etcd test lock
        let s = connect(&etcd_endpoint("unbounded_ranges_cover_the_whole_keyspace").unwrap()).await;
        let prefix = format!("/corral-store-test/unbounded/{}/", std::process::id());
        for k in ["a", "b", "c"] {
            s.put(format!("{prefix}{k}").as_bytes(), b(k), Compare::Any)
                .await
                .unwrap();
        }
        // Empty start and end: everything, ours included (other tests' keys may be there too).
        let all = s.range(b"", b"", 0).await.unwrap();
        let ours = all
            .kvs
            .iter()
            .filter(|kv| kv.key.starts_with(prefix.as_bytes()))
            .count();
        assert_eq!(ours, 3);
        assert_eq!(s.count(b"", b"").await.unwrap(), all.kvs.len() as u64);
        // Empty end from a start inside the prefix: to the end of the keyspace.
        let from_b = s
            .range(format!("{prefix}b").as_bytes(), b"", 0)
            .await
            .unwrap();
        assert_eq!(from_b.kvs[0].key, format!("{prefix}b").into_bytes());
        assert!(from_b.kvs.len() >= 2);
        // Ranges that cannot hold a key.
        assert!(s.range(b"", b"\0", 0).await.unwrap().kvs.is_empty());
        assert_eq!(s.count(b"/z", b"/a").await.unwrap(), 0);
        assert_eq!(s.get(b"").await.unwrap(), None);
        // Paging through the prefix with limit and `more`.
        let end = prefix_end(prefix.as_bytes());
        let page = s.range(prefix.as_bytes(), &end, 2).await.unwrap();
        assert_eq!((page.kvs.len(), page.more), (2, true));
        assert_eq!(page.revision, s.current_revision());
        s.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_servers_share_one_etcd() {
        let Some(h) = Harness::etcd("two_servers_share_one_etcd").await else {
            return;
        };
        let _ = h;
        let endpoint = etcd_endpoint("two_servers_share_one_etcd").unwrap();
        let a = connect(&endpoint).await;
        let bs = connect(&endpoint).await;
        let key = format!("/corral-store-test/two/{}/cm", std::process::id()).into_bytes();
        let end = prefix_end(&key);

        // B watches from now; A writes.
        let mut w = bs.watch(&key, &end, 0).unwrap();
        let r1 = revision(a.put(&key, b("1"), Compare::Absent).await.unwrap());
        match tokio::time::timeout(WAIT, w.next()).await.unwrap() {
            Some(Ok(WatchMessage::Event(ev))) => {
                assert_eq!(
                    (ev.kind, ev.revision(), ev.kv.value),
                    (EventKind::Put, r1, b("1"))
                )
            }
            other => panic!("{other:?}"),
        }
        // B reads A's write and learns the newer revision from the answer.
        let kv = bs.get(&key).await.unwrap().unwrap();
        assert_eq!(kv.mod_revision, r1);
        assert!(bs.current_revision() >= r1);
        // Both create the same key: exactly one wins; the other sees the winner's value.
        match bs.put(&key, b("b"), Compare::Absent).await.unwrap() {
            TxnOutcome::Conflict { current } => assert_eq!(current.unwrap().value, b("1")),
            other => panic!("{other:?}"),
        }
        // Compare-and-swap across servers.
        let r2 = revision(
            bs.put(&key, b("2"), Compare::ModRevision(r1))
                .await
                .unwrap(),
        );
        assert!(matches!(
            a.put(&key, b("stale"), Compare::ModRevision(r1))
                .await
                .unwrap(),
            TxnOutcome::Conflict { .. }
        ));
        match tokio::time::timeout(WAIT, w.next()).await.unwrap() {
            Some(Ok(WatchMessage::Event(ev))) => {
                assert_eq!(ev.revision(), r2);
                assert_eq!(ev.prev.unwrap().mod_revision, r1);
            }
            other => panic!("{other:?}"),
        }
        a.delete(&key, Compare::Any).await.unwrap();
        a.close().await;
        bs.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_by_another_server_ends_an_old_watch() {
        let Some(h) = Harness::etcd("compaction_by_another_server_ends_an_old_watch").await else {
            return;
        };
        let _ = h;
        let endpoint = etcd_endpoint("compaction_by_another_server_ends_an_old_watch").unwrap();
        let a = connect(&endpoint).await;
        let bs = connect(&endpoint).await;
        let key = format!("/corral-store-test/compact/{}/k", std::process::id()).into_bytes();
        let base = a.current_revision();
        for i in 0..20 {
            a.put(&key, b(&i.to_string()), Compare::Any).await.unwrap();
        }
        // B does not know yet; its watch is accepted, and etcd ends it.
        let target = base + 10;
        a.compact(target).await.unwrap();
        let mut w = bs.watch(&key, &prefix_end(&key), base).unwrap();
        match tokio::time::timeout(WAIT, w.next()).await.unwrap() {
            Some(Err(Error::Compacted {
                compact_revision, ..
            })) => assert!(compact_revision >= target, "{compact_revision}"),
            other => panic!("{other:?}"),
        }
        assert!(w.next().await.is_none());
        assert!(bs.compacted_revision() >= target);
        // A new connection finds the compacted revision by itself.
        let c = connect(&endpoint).await;
        assert!(c.compacted_revision() >= target);
        for s in [a, bs, c] {
            s.close().await;
        }
    }

    /// A private etcd on free ports, stopped (and its directory removed) when dropped.
    struct PrivateEtcd {
        child: std::process::Child,
        dir: tempfile::TempDir,
        client_port: u16,
        peer_port: u16,
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl PrivateEtcd {
        fn start(dir: tempfile::TempDir, client_port: u16, peer_port: u16) -> PrivateEtcd {
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
            let child = std::process::Command::new("etcd")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &format!("default={peer}")])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting etcd");
            PrivateEtcd {
                child,
                dir,
                client_port,
                peer_port,
            }
        }

        fn endpoint(&self) -> String {
            format!("http://127.0.0.1:{}", self.client_port)
        }

        /// Stops etcd (SIGKILL: the harshest restart) and gives back its directory and ports.
        fn stop(mut self) -> (tempfile::TempDir, u16, u16) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            (dir, self.client_port, self.peer_port)
        }
    }

    impl Drop for PrivateEtcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_survives_an_etcd_restart() {
        // Needs the etcd binary, which a configured CORRAL_TEST_ETCD implies on this machine.
        if etcd_endpoint("watch_survives_an_etcd_restart").is_none() {
            return;
        }
        let etcd = PrivateEtcd::start(tempfile::tempdir().unwrap(), free_port(), free_port());
        let endpoint = etcd.endpoint();
        let deadline = Instant::now() + WAIT;
        let s = loop {
            match Store::connect_etcd(std::slice::from_ref(&endpoint), quiet()).await {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("private etcd did not start: {e}"),
            }
        };
        let r1 = revision(s.put(b"/r/a", b("1"), Compare::Any).await.unwrap());
        let mut w = s.watch(b"/r/", b"/r0", 0).unwrap();
        let r2 = revision(s.put(b"/r/a", b("2"), Compare::Any).await.unwrap());
        match tokio::time::timeout(WAIT, w.next()).await.unwrap() {
            Some(Ok(WatchMessage::Event(ev))) => assert_eq!(ev.revision(), r2),
            other => panic!("{other:?}"),
        }

        let (dir, cp, pp) = etcd.stop();
        let etcd = PrivateEtcd::start(dir, cp, pp);
        // Writes after the restart reach the same watch, without gap or repeat.
        let deadline = Instant::now() + WAIT;
        let r3 = loop {
            match s.put(b"/r/a", b("3"), Compare::Any).await {
                Ok(o) => break revision(o),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("etcd did not come back: {e}"),
            }
        };
        match tokio::time::timeout(Duration::from_secs(40), w.next())
            .await
            .unwrap()
        {
            Some(Ok(WatchMessage::Event(ev))) => {
                assert_eq!(ev.revision(), r3);
                assert_eq!(ev.prev.unwrap().mod_revision, r2);
            }
            other => panic!("{other:?}"),
        }
        assert!(r1 < r2 && r2 < r3);
        s.close().await;
        drop(etcd);
    }
}
