//! A raw HTTP/1.1 server on loopback that answers every request with one scripted answer, and
//! records what it received and how much it sent: for what a well-behaved fake cannot do (an
//! endless body, a redirect to somewhere else) and to see whether a client came at all.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};

/// What every request gets.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A status line, extra header lines (`Name: value`), and a body with its Content-Length.
    Fixed {
        status: u16,
        headers: Vec<String>,
        body: Vec<u8>,
    },
    /// `200` with a chunked body of 64 KiB chunks that never ends (until the client goes away);
    /// `json_prefix` is written first, so the start looks like the expected JSON.
    Endless { json_prefix: String },
}

/// One request as received: the request line and the header block, as text.
#[derive(Debug, Clone)]
pub struct Seen {
    pub head: String,
}

/// Handle of a running stub; dropping it stops the server.
#[derive(Debug)]
pub struct HttpStub {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    body_bytes_sent: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl HttpStub {
    /// Starts the stub on `127.0.0.1:0`. Needs a tokio runtime.
    pub async fn start(answer: Answer) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let body_bytes_sent = Arc::new(AtomicU64::new(0));
        let (s, b) = (seen.clone(), body_bytes_sent.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (s, b, answer) = (s.clone(), b.clone(), answer.clone());
                tokio::spawn(async move {
                    // One request per connection is all the tests need; the head ends at the
                    // first blank line (request bodies, if any, are not read).
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                        if head.len() > 64 * 1024 {
                            return;
                        }
                    }
                    s.lock().unwrap().push(Seen {
                        head: String::from_utf8_lossy(&head).into_owned(),
                    });
                    match answer {
                        Answer::Fixed {
                            status,
                            headers,
                            body,
                        } => {
                            let mut out = format!(
                                "HTTP/1.1 {status} Stub\r\nContent-Length: {}\r\nConnection: close\r\n",
                                body.len()
                            );
                            for h in headers {
                                out.push_str(&h);
                                out.push_str("\r\n");
                            }
                            out.push_str("\r\n");
                            let _ = conn.write_all(out.as_bytes()).await;
                            if conn.write_all(&body).await.is_ok() {
                                b.fetch_add(body.len() as u64, Ordering::Relaxed);
                            }
                        }
                        Answer::Endless { json_prefix } => {
                            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                                        Transfer-Encoding: chunked\r\n\r\n";
                            if conn.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            let mut first = json_prefix.into_bytes();
                            let filler = vec![b' '; 64 * 1024];
                            loop {
                                let chunk = if first.is_empty() {
                                    &filler[..]
                                } else {
                                    &first[..]
                                };
                                let frame = format!("{:x}\r\n", chunk.len());
                                let sent = async {
                                    conn.write_all(frame.as_bytes()).await?;
                                    conn.write_all(chunk).await?;
                                    conn.write_all(b"\r\n").await
                                };
                                // A client that stopped reading: the write stalls, then the
                                // connection is gone. Either ends the answer.
                                match tokio::time::timeout(Duration::from_secs(10), sent).await {
                                    Ok(Ok(())) => {
                                        b.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                                    }
                                    _ => return,
                                }
                                first.clear();
                            }
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            seen,
            body_bytes_sent,
            task,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Body bytes the stub managed to write so far (all answers together).
    pub fn body_bytes_sent(&self) -> u64 {
        self.body_bytes_sent.load(Ordering::Relaxed)
    }
}

impl Drop for HttpStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}
