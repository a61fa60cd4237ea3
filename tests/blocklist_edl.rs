//! The EDL server over real sockets: basic auth (401 with a challenge), allowed clients (closed
//! at accept), ETag and Last-Modified (304), HTTPS and its certificate re-read, the limits
//! (header-read and idle timeouts, connection caps, header size, no bodies), the failed-auth
//! throttle, and lists swapped while clients fetch in a loop: every response (and every read of
//! the file) is a whole list, the old or the new.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{
    io::{Read, Write},
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use reqwest::{StatusCode, header};
use sensor_blocklist::{
    edl,
    edl::{EdlList, EdlSection},
};

struct Server {
    url: String,
    list: EdlList,
    stats: Arc<edl::EdlStats>,
    tls: Option<Arc<sensor_blocklist::edl_tls::CertSource>>,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(edit: impl FnOnce(&mut EdlSection, &Path)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("password");
        std::fs::write(&pw, "s3cret-pw\n").expect("password file");
        let mut section = EdlSection {
            path: dir.path().join("edl.txt"),
            listen: "127.0.0.1:0".into(),
            basic_auth_user: "paloalto".into(),
            basic_auth_password: sensor_model::secret::SecretSource {
                env: None,
                file: Some(pw),
            },
            allowed_clients: vec!["127.0.0.0/8".into()],
            // Loopback: the password never crosses a network (the TLS test turns TLS on).
            allow_basic_auth_over_http: true,
            ..EdlSection::default()
        };
        edit(&mut section, dir.path());
        let list = EdlList::open(&section.path).expect("open");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = edl::serve(&section, list.clone(), async {
            let _ = rx.await;
        })
        .await
        .expect("serve");
        let scheme = if section.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        Self {
            url: format!(
                "{scheme}://{}:{}{}",
                if scheme == "https" {
                    "localhost".to_owned()
                } else {
                    server.local_addr.ip().to_string()
                },
                server.local_addr.port(),
                section.url_path
            ),
            list,
            stats: server.stats.clone(),
            tls: server.tls.clone(),
            addr: server.local_addr,
            stop: Some(tx),
            task: Some(server.task),
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        tokio::time::timeout(Duration::from_secs(10), self.task.take().expect("task"))
            .await
            .expect("server stops")
            .expect("server task");
    }
}

/// A fresh self-signed certificate for `localhost` (openssl, as an operator would make one).
fn self_signed(cert: &Path, key: &Path) {
    sensor_testkit::netns::sh(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            &key.display().to_string(),
            "-out",
            &cert.display().to_string(),
        ],
    );
}

/// A client that trusts only `cert_pem` and sends `localhost` to `addr`.
fn tls_client(cert_pem: &[u8], addr: std::net::SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem).unwrap()])
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Reads until the server closes (EOF or reset); returns what came and how long it took.
fn read_to_close(stream: &mut std::net::TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("still open after {limit:?}");
            }
            Err(_) => break,
        }
    }
    (got, t0.elapsed())
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_conditional_requests_and_whole_bodies() {
    let s = Server::start(|_, _| {}).await;
    let c = client();
    let get = || c.get(&s.url).basic_auth("paloalto", Some("s3cret-pw"));

    let r = get().send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "nothing published yet"
    );

    s.list
        .publish("45.33.32.156 expires 2026-12-24 severity high\n")
        .unwrap();
    let r = c.get(&s.url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = r.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");
    let r = c
        .get(&s.url)
        .basic_auth("paloalto", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .get(&s.url)
        .basic_auth("other", Some("s3cret-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let r = get().send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
    let last_modified = r.headers()[header::LAST_MODIFIED]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        r.text().await.unwrap(),
        "45.33.32.156 expires 2026-12-24 severity high\n"
    );
    assert_eq!(
        std::fs::read_to_string(s.list.path()).unwrap(),
        "45.33.32.156 expires 2026-12-24 severity high\n",
        "the file holds what is served"
    );

    // Conditional requests.
    let r = get()
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()[header::ETAG].to_str().unwrap(), etag);
    let r = get()
        .header(header::IF_MODIFIED_SINCE, &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = get()
        .header(header::IF_MODIFIED_SINCE, "Sun, 06 Nov 1994 08:49:37 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = get()
        .header(header::IF_NONE_MATCH, "\"other\"")
        .header(header::IF_MODIFIED_SINCE, &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "If-None-Match wins");
    let r = c
        .head(&s.url)
        .basic_auth("paloalto", Some("s3cret-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::ETAG].to_str().unwrap(), etag);

    // Republishing the same text keeps the validators; a new text changes both.
    s.list
        .publish("45.33.32.156 expires 2026-12-24 severity high\n")
        .unwrap();
    let r = get()
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    s.list
        .publish("81.2.3.4 expires 2026-12-25 severity critical\n")
        .unwrap();
    let r = get()
        .header(header::IF_NONE_MATCH, &etag)
        .header(header::IF_MODIFIED_SINCE, &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_ne!(r.headers()[header::ETAG].to_str().unwrap(), etag);
    assert_ne!(
        r.headers()[header::LAST_MODIFIED].to_str().unwrap(),
        last_modified
    );
    assert_eq!(
        r.text().await.unwrap(),
        "81.2.3.4 expires 2026-12-25 severity critical\n"
    );

    let r = get().send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = c
        .get(s.url.replace("/blocklist.txt", "/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    s.stop().await;
}

/// A client outside `allowed_clients` is closed at accept: no status, no TLS, no byte read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_allowed_list_are_closed_at_accept_even_with_credentials() {
    let s = Server::start(|sec, _| sec.allowed_clients = vec!["10.0.0.0/8".into()]).await;
    s.list.publish("45.33.32.156\n").unwrap();
    let r = client()
        .get(&s.url)
        .basic_auth("paloalto", Some("s3cret-pw"))
        .send()
        .await;
    assert!(r.is_err(), "closed before any response: {r:?}");
    let c = &s.stats.gate.counters;
    assert_eq!(c.refused_not_allowed.load(Ordering::Relaxed), 1);
    assert_eq!(c.accepted.load(Ordering::Relaxed), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_over_tls() {
    let s = Server::start(|sec, dir| {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        self_signed(&cert, &key);
        sec.tls_cert = Some(cert);
        sec.tls_key = Some(key);
        sec.allow_basic_auth_over_http = false;
    })
    .await;
    assert!(s.url.starts_with("https://localhost:"));
    s.list.publish("45.33.32.156\n").unwrap();
    let pem = std::fs::read(s._dir.path().join("cert.pem")).unwrap();
    let c = tls_client(&pem, s.addr);
    let r = c
        .get(&s.url)
        .basic_auth("paloalto", Some("s3cret-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "45.33.32.156\n");
    // Plain HTTP on the TLS port gets no list.
    let plain = s.url.replace("https://", "http://");
    assert!(
        client()
            .get(&plain)
            .basic_auth("paloalto", Some("s3cret-pw"))
            .send()
            .await
            .map(|r| r.status() != StatusCode::OK)
            .unwrap_or(true)
    );
    s.stop().await;
}

/// Big lists swapped 100 times while four clients fetch in a loop and a thread reads the file:
/// every body is exactly one of the two lists, and its ETag is that list's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_while_clients_fetch_never_serves_a_mix() {
    let s = Server::start(|_, _| {}).await;
    let make = |b: u32, n: u32| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "{} expires 2026-12-24 severity high\n",
                    std::net::Ipv4Addr::from(b + i)
                )
            })
            .collect()
    };
    let old = Arc::new(make(0x5100_0000, 20_000));
    let new = Arc::new(make(0x5200_0000, 25_000));
    s.list.publish(&old).unwrap();
    let etag_old = s.list.current().unwrap().etag.clone();
    s.list.publish(&new).unwrap();
    let etag_new = s.list.current().unwrap().etag.clone();
    s.list.publish(&old).unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut fetchers = Vec::new();
    for _ in 0..4 {
        let (url, old, new, stop) = (s.url.clone(), old.clone(), new.clone(), stop.clone());
        let (eo, en) = (etag_old.clone(), etag_new.clone());
        fetchers.push(tokio::spawn(async move {
            let c = client();
            let (mut n_old, mut n_new) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c
                    .get(&url)
                    .basic_auth("paloalto", Some("s3cret-pw"))
                    .send()
                    .await
                    .expect("fetch");
                assert_eq!(r.status(), StatusCode::OK);
                let etag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
                let body = r.text().await.expect("body");
                if body == *old {
                    assert_eq!(etag, eo);
                    n_old += 1;
                } else if body == *new {
                    assert_eq!(etag, en);
                    n_new += 1;
                } else {
                    panic!("a mixed or partial list of {} bytes", body.len());
                }
            }
            (n_old, n_new)
        }));
    }
    let file_reader = {
        let (path, old, new, stop) = (
            s.list.path().to_owned(),
            old.clone(),
            new.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let text = std::fs::read_to_string(&path).expect("read the EDL file");
                assert!(text == *old || text == *new, "file read half-written");
                reads += 1;
            }
            reads
        })
    };
    for i in 0..100 {
        let list = s.list.clone();
        let text = if i % 2 == 0 { new.clone() } else { old.clone() };
        tokio::task::spawn_blocking(move || list.publish(&text).expect("publish"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut total_old, mut total_new) = (0, 0);
    for f in fetchers {
        let (o, n) = f.await.expect("fetcher");
        total_old += o;
        total_new += n;
    }
    let reads = file_reader.join().expect("file reader");
    assert!(
        total_old > 0 && total_new > 0,
        "both lists were served ({total_old} old, {total_new} new)"
    );
    assert!(reads > 0);
    s.stop().await;
}

/// The header-read timeout, the idle timeout, the per-client and total caps, the header size
/// cap and the no-body rule, each over a raw socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_oversized_and_excess_connections_are_cut() {
    let s = Server::start(|sec, _| {
        sec.limits.header_read_timeout_secs = 1;
        sec.limits.idle_timeout_secs = 2;
        sec.limits.max_connections = 3;
        sec.limits.max_connections_per_client = 2;
    })
    .await;
    s.list.publish("45.33.32.156\n").unwrap();
    let addr = s.addr;
    let c = &s.stats.gate.counters;

    // Slowloris: half a header, then nothing. Cut at the header-read timeout (1 s).
    let slow = tokio::task::spawn_blocking(move || {
        let mut t = std::net::TcpStream::connect(addr).unwrap();
        t.write_all(b"GET /blocklist.txt HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        read_to_close(&mut t, Duration::from_secs(8)).1
    })
    .await
    .unwrap();
    assert!(slow < Duration::from_secs(4), "cut after {slow:?}");
    wait_until("header timeout counted", Duration::from_secs(5), || {
        c.closed_header_timeout.load(Ordering::Relaxed) == 1
    })
    .await;

    // Keep-alive after a whole request: waiting for the next request is reading a header, so
    // the connection goes at the header-read timeout (1 s).
    let idle = tokio::task::spawn_blocking(move || {
        let mut t = std::net::TcpStream::connect(addr).unwrap();
        t.write_all(
            b"GET /blocklist.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Basic cGFsb2FsdG86czNjcmV0LXB3\r\n\r\n",
        )
        .unwrap();
        read_to_close(&mut t, Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(
        idle.0.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&idle.0)
    );
    assert!(idle.1 < Duration::from_secs(4), "closed after {:?}", idle.1);

    // A client that stops reading a big list (slow read): nothing moves, cut at the idle
    // timeout (2 s).
    let big_list: String = (0..200_000u32)
        .map(|i| {
            format!(
                "{} expires 2026-12-24 severity high\n",
                std::net::Ipv4Addr::from(0x5100_0000 + i)
            )
        })
        .collect();
    s.list.publish(&big_list).unwrap();
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    stalled
        .write_all(
            b"GET /blocklist.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Basic cGFsb2FsdG86czNjcmV0LXB3\r\n\r\n",
        )
        .unwrap();
    let t0 = Instant::now();
    wait_until("idle cut", Duration::from_secs(10), || {
        c.closed_idle.load(Ordering::Relaxed) == 1
    })
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "cut after {:?}",
        t0.elapsed()
    );
    drop(stalled);
    s.list.publish("45.33.32.156\n").unwrap();

    // Header size: 431 above 8 KiB.
    let big = tokio::task::spawn_blocking(move || {
        let mut t = std::net::TcpStream::connect(addr).unwrap();
        let filler = "a".repeat(10_000);
        let _ = t.write_all(
            format!("GET /blocklist.txt HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n")
                .as_bytes(),
        );
        read_to_close(&mut t, Duration::from_secs(5)).0
    })
    .await
    .unwrap();
    assert!(
        big.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&big)
    );

    // A request body: 413.
    let body = client()
        .post(&s.url)
        .basic_auth("paloalto", Some("s3cret-pw"))
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(body.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Per-client cap (2) from 127.0.0.1, then the total cap (3) from another loopback address.
    let a1 = std::net::TcpStream::connect(addr).unwrap();
    let a2 = std::net::TcpStream::connect(addr).unwrap();
    wait_until("two connections open", Duration::from_secs(5), || {
        s.stats.gate.open() == 2
    })
    .await;
    let mut a3 = std::net::TcpStream::connect(addr).unwrap();
    let (got, took) = read_to_close(&mut a3, Duration::from_secs(5));
    assert!(
        got.is_empty() && took < Duration::from_secs(1),
        "third from one client: closed at accept"
    );
    assert_eq!(c.refused_client_cap.load(Ordering::Relaxed), 1);
    let other = |ip: [u8; 4]| {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((std::net::Ipv4Addr::from(ip), 0).into()).unwrap();
        sock
    };
    let b1 = other([127, 0, 0, 2]).connect(addr).await.unwrap();
    wait_until("three open", Duration::from_secs(5), || {
        s.stats.gate.open() == 3
    })
    .await;
    let b2 = other([127, 0, 0, 3]).connect(addr).await.unwrap();
    let b2 = b2.into_std().unwrap();
    b2.set_nonblocking(false).unwrap();
    let mut b2 = b2;
    let (got, _) = read_to_close(&mut b2, Duration::from_secs(5));
    assert!(got.is_empty());
    assert_eq!(c.refused_total_cap.load(Ordering::Relaxed), 1);
    drop((a1, a2, b1));
    wait_until("slots given back", Duration::from_secs(5), || {
        s.stats.gate.open() == 0
    })
    .await;
    let ok = client()
        .get(&s.url)
        .basic_auth("paloalto", Some("s3cret-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    s.stop().await;
}

/// `auth_failure_limit` wrong passwords from one address: its connections are refused at
/// accept for `auth_throttle_secs`, even with the right password; other addresses are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_authentication_is_throttled_at_accept() {
    let s = Server::start(|sec, _| {
        sec.auth_failure_limit = 3;
        sec.auth_throttle_secs = 2;
    })
    .await;
    s.list.publish("45.33.32.156\n").unwrap();
    let c = client();
    for _ in 0..3 {
        let r = c
            .get(&s.url)
            .basic_auth("paloalto", Some("guess"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let t0 = Instant::now();
    let r = client()
        .get(&s.url)
        .basic_auth("paloalto", Some("s3cret-pw"))
        .send()
        .await;
    assert!(r.is_err(), "throttled: closed at accept ({r:?})");
    assert_eq!(s.stats.throttle.throttled.load(Ordering::Relaxed), 1);
    assert!(
        s.stats
            .gate
            .counters
            .refused_throttled
            .load(Ordering::Relaxed)
            >= 1
    );
    // Another address is served meanwhile.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 5]))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = other
        .get(&s.url)
        .basic_auth("paloalto", Some("s3cret-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // The throttle ends.
    let mut served = false;
    while t0.elapsed() < Duration::from_secs(6) {
        if let Ok(r) = client()
            .get(&s.url)
            .basic_auth("paloalto", Some("s3cret-pw"))
            .send()
            .await
        {
            assert_eq!(r.status(), StatusCode::OK);
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "served again after the throttle");
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "not before the throttle ends"
    );
    // The fetches were recorded (all from unlisted addresses here).
    let unlisted = s.stats.fetches.states().pop().unwrap();
    assert_eq!(unlisted.unauthorized, 3);
    assert!(unlisted.successes >= 2);
    s.stop().await;
}

/// A new certificate and key take effect on reload (SIGHUP's path) without a restart; a broken
/// pair on reload keeps the old one in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_is_reread_on_reload() {
    use sensor_model::reload::Reload as _;
    let s = Server::start(|sec, dir| {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        self_signed(&cert, &key);
        sec.tls_cert = Some(cert);
        sec.tls_key = Some(key);
        sec.allow_basic_auth_over_http = false;
    })
    .await;
    s.list.publish("45.33.32.156\n").unwrap();
    let dir = s._dir.path().to_owned();
    let old_pem = std::fs::read(dir.join("cert.pem")).unwrap();
    let fetch = |pem: Vec<u8>| {
        let url = s.url.clone();
        let addr = s.addr;
        async move {
            tls_client(&pem, addr)
                .get(&url)
                .basic_auth("paloalto", Some("s3cret-pw"))
                .send()
                .await
                .map(|r| r.status())
        }
    };
    assert_eq!(fetch(old_pem.clone()).await.unwrap(), StatusCode::OK);
    // Renewed: new files in place, then the reload SIGHUP triggers.
    self_signed(&dir.join("cert.pem"), &dir.join("key.pem"));
    let new_pem = std::fs::read(dir.join("cert.pem")).unwrap();
    assert_ne!(new_pem, old_pem);
    let tls = s.tls.clone().unwrap();
    let reload = sensor_blocklist::edl_tls::TlsReload::new(tls);
    assert_eq!(reload.reload().unwrap(), 1);
    assert_eq!(fetch(new_pem.clone()).await.unwrap(), StatusCode::OK);
    assert!(fetch(old_pem).await.is_err(), "the old certificate is gone");
    // A key that does not match: the reload fails and the served pair stays.
    let other = tempfile::tempdir().unwrap();
    self_signed(&other.path().join("c.pem"), &other.path().join("k.pem"));
    std::fs::copy(other.path().join("k.pem"), dir.join("key.pem")).unwrap();
    assert!(reload.reload().is_err());
    assert_eq!(fetch(new_pem).await.unwrap(), StatusCode::OK);
    s.stop().await;
}
