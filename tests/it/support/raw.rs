//! Raw HTTP/1.1 over a socket, for what a well-behaved client cannot send: heads that stop half
//! way, stalled bodies, silent or idle connections, answers read exactly as framed.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something a server must do by itself (close a connection it
/// should close). Generous: the assertion is that it happens, not how fast.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One HTTP/1.1 answer read off a raw connection, framed by its own headers.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// A keep-alive HTTP/1.1 connection to a server under test that reads answers exactly as a client would:
/// by `Content-Length`, or chunk by chunk. Anything left over belongs to the next answer.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).await.unwrap();
    }

    pub async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }

    pub async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "connection ended mid-answer");
        }
        self.buf.drain(..n).collect()
    }

    pub async fn line(&mut self) -> String {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line = self.buf.drain(..end + 2).collect::<Vec<_>>();
                return String::from_utf8_lossy(&line[..end]).into_owned();
            }
            assert!(self.fill().await, "connection ended mid-line");
        }
    }

    /// Reads one answer to a request of `method`.
    pub async fn answer(&mut self, method: &str) -> RawAnswer {
        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end;
            }
            assert!(self.fill().await, "no answer");
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut answer = RawAnswer {
            status,
            head,
            body: Vec::new(),
        };
        if method == "HEAD" || status == 304 {
            return answer;
        }
        let chunked = answer
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        if chunked {
            loop {
                let size = usize::from_str_radix(self.line().await.trim(), 16).unwrap();
                if size == 0 {
                    self.line().await;
                    break;
                }
                let data = self.take(size).await;
                answer.body.extend_from_slice(&data);
                self.line().await;
            }
        } else if let Some(len) = answer.header("content-length") {
            answer.body = self.take(len.parse().unwrap()).await;
        }
        answer
    }

    /// Whether the server closed the connection (within [`PATIENCE`]), and what it sent first.
    pub async fn closed(&mut self) -> (bool, Vec<u8>) {
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (true, std::mem::take(&mut self.buf)),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return (false, std::mem::take(&mut self.buf)),
            }
        }
    }
}
