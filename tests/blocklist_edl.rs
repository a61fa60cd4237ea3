//! The EDL server over real sockets: basic auth (401 with a challenge), allowed clients (403),
//! ETag and Last-Modified (304), HTTPS, and lists swapped while clients fetch in a loop: every
//! response (and every read of the file) is a whole list, the old or the new.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a failed unwrap or expect is the test failing, with its message"
)]

use std::{path::Path, sync::Arc, time::Duration};

use reqwest::{StatusCode, header};
use sensor_blocklist::{
    edl,
    edl::{EdlList, EdlSection},
};

struct Server {
    url: String,
    list: EdlList,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_allowed_list_get_403_even_with_credentials() {
    let s = Server::start(|sec, _| sec.allowed_clients = vec!["10.0.0.0/8".into()]).await;
    s.list.publish("45.33.32.156\n").unwrap();
    let r = client()
        .get(&s.url)
        .basic_auth("paloalto", Some("s3cret-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_over_tls() {
    let s = Server::start(|sec, dir| {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
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
        sec.tls_cert = Some(cert);
        sec.tls_key = Some(key);
    })
    .await;
    assert!(s.url.starts_with("https://localhost:"));
    s.list.publish("45.33.32.156\n").unwrap();
    let pem = std::fs::read(s._dir.path().join("cert.pem")).unwrap();
    let c = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()])
        .resolve(
            "localhost",
            format!(
                "127.0.0.1:{}",
                s.url.rsplit(':').next().unwrap().split('/').next().unwrap()
            )
            .parse()
            .unwrap(),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
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
