//! One client connection: reads requests under deadlines and size bounds,
//! writes answers. HTTP/1.1 with keep-alive and pipelining; bodies need a
//! `Content-Length` (a chunked body is answered `411`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::ServerConfig;
use super::message::{Request, Response};

/// Most headers one request may carry.
const MAX_HEADERS: usize = 64;

/// Why no request could be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// The peer closed (or the server shut the socket) between requests.
    Closed,
    /// No first byte within the idle time: close quietly.
    Idle,
    /// An answer to send before closing (400, 408, 411, 413, 431, 505).
    Answer(Response),
}

fn answer(status: u16, code: &str, message: &str) -> ReadError {
    ReadError::Answer(Response::error(status, code, message))
}

/// What the connection decided about the request it read.
pub(super) struct Incoming {
    pub request: Request,
    /// The client asked to close after this answer (or spoke HTTP/1.0).
    pub close: bool,
}

pub(super) struct Connection {
    stream: TcpStream,
    remote: Option<SocketAddr>,
    /// Bytes read past the previous request (pipelining).
    buffer: Vec<u8>,
}

impl Connection {
    pub(super) fn new(stream: TcpStream) -> Connection {
        let remote = stream.peer_addr().ok();
        Connection { stream, remote, buffer: Vec::new() }
    }

    /// Reads into the buffer before `deadline`; `Ok(0)` is end of stream.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // A zero timeout means "none" to the socket: the check above keeps it positive.
        self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Err(io::ErrorKind::TimedOut.into())
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the next request: its first byte within `first_byte` (the idle
    /// wait), its head within `config.head_timeout` of that, its body within
    /// `config.body_timeout` of the head.
    pub(super) fn read_request(&mut self, config: &ServerConfig, first_byte: Duration) -> Result<Incoming, ReadError> {
        if self.buffer.is_empty() {
            match self.fill(Instant::now() + first_byte) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(ReadError::Idle),
                Err(_) => return Err(ReadError::Closed),
            }
        }
        let head_deadline = Instant::now() + config.head_timeout;
        let (head_len, head) = loop {
            match parse_head(&self.buffer)? {
                Some(parsed) => break parsed,
                None if self.buffer.len() > config.max_head_bytes => {
                    return Err(answer(
                        431,
                        "head_too_large",
                        &format!("the request head exceeds {} bytes", config.max_head_bytes),
                    ));
                }
                None => self.fill_or_answer(head_deadline, "the request head")?,
            }
        };
        if head_len > config.max_head_bytes {
            return Err(answer(
                431,
                "head_too_large",
                &format!("the request head exceeds {} bytes", config.max_head_bytes),
            ));
        }
        self.buffer.drain(..head_len);
        let body_len = body_length(&head.headers, config.max_body_bytes)?;
        if body_len > 0 && head.expects_continue {
            // The client waits for this before it sends the body.
            self.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").map_err(|_| ReadError::Closed)?;
        }
        let body_deadline = Instant::now() + config.body_timeout;
        while self.buffer.len() < body_len {
            self.fill_or_answer(body_deadline, "the request body")?;
        }
        let body: Vec<u8> = self.buffer.drain(..body_len).collect();
        let close = head.http_1_0 || head.wants_close;
        let (path, query) = match head.target.split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (head.target, None),
        };
        let request = Request { method: head.method, path, query, headers: head.headers, body, remote: self.remote };
        Ok(Incoming { request, close })
    }

    /// `fill`, with a timeout or an early end turned into the answer to send.
    fn fill_or_answer(&mut self, deadline: Instant, what: &str) -> Result<(), ReadError> {
        match self.fill(deadline) {
            Ok(0) => Err(ReadError::Closed),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                Err(answer(408, "request_timeout", &format!("{what} did not arrive in time")))
            }
            Err(_) => Err(ReadError::Closed),
        }
    }

    /// Writes the answer; for a `HEAD` request (`head_only`) without its
    /// body, as HTTP requires.
    pub(super) fn write_response(&mut self, response: &Response, close: bool, head_only: bool) -> io::Result<()> {
        let mut bytes = response.encode(close);
        if head_only {
            bytes.truncate(bytes.len() - response.body().len());
        }
        self.write_all(&bytes)
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends what remains, then closes; reads (and drops) what the client
    /// still sends for a short while, so that closing with unread bytes does
    /// not reset the connection before the client has read the answer.
    pub(super) fn close_after(&mut self, response: Option<&Response>, linger: Duration) {
        if let Some(response) = response
            && self.write_response(response, true, false).is_err()
        {
            return;
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + linger;
        let mut drained = 0usize;
        // Bounded in time and bytes.
        while drained < 1 << 20 {
            self.buffer.clear();
            match self.fill(deadline) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
}

/// A parsed request head, owned.
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    http_1_0: bool,
    wants_close: bool,
    expects_continue: bool,
}

/// `Ok(None)` until the head is complete; then its length and contents.
fn parse_head(buffer: &[u8]) -> Result<Option<(usize, Head)>, ReadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let len = match parsed.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(answer(431, "too_many_headers", &format!("more than {MAX_HEADERS} headers")));
        }
        Err(httparse::Error::Version) if names_http_version(buffer) => {
            return Err(answer(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served"));
        }
        Err(e) => return Err(answer(400, "bad_request", &format!("malformed request head: {e}"))),
    };
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version) else {
        return Err(answer(400, "bad_request", "incomplete request line"));
    };
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for header in parsed.headers.iter() {
        let Ok(value) = std::str::from_utf8(header.value) else {
            return Err(answer(400, "bad_request", &format!("header {} is not UTF-8", header.name)));
        };
        headers.push((header.name.to_owned(), value.trim().to_owned()));
    }
    let has_token = |name: &str, token: &str| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let http_1_0 = version == 0;
    let wants_close = has_token("connection", "close") || (http_1_0 && !has_token("connection", "keep-alive"));
    let expects_continue = has_token("expect", "100-continue");
    let head =
        Head { method: method.to_owned(), target: target.to_owned(), headers, http_1_0, wants_close, expects_continue };
    Ok(Some((len, head)))
}

/// True if the request line ends in `HTTP/<something>`: a version we do
/// not speak, rather than no HTTP at all.
fn names_http_version(buffer: &[u8]) -> bool {
    let line = buffer.split(|&b| b == b'\n').next().unwrap_or_default();
    line.rsplit(|&b| b == b' ').next().is_some_and(|last| last.starts_with(b"HTTP/"))
}

/// The body's length from `Content-Length`; chunked bodies are refused.
fn body_length(headers: &[(String, String)], max_body_bytes: usize) -> Result<usize, ReadError> {
    if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding")) {
        return Err(answer(
            411,
            "length_required",
            "send the body with a Content-Length (chunked bodies are not accepted)",
        ));
    }
    let mut lengths = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("content-length")).map(|(_, v)| v);
    let Some(first) = lengths.next() else { return Ok(0) };
    if lengths.any(|other| other != first) {
        return Err(answer(400, "bad_request", "conflicting Content-Length headers"));
    }
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Err(answer(400, "bad_request", &format!("bad Content-Length {first:?}")));
    }
    // Digits only: the parse fails only on overflow, which is too large anyway.
    let len = first.parse::<u64>().unwrap_or(u64::MAX);
    if len > max_body_bytes as u64 {
        return Err(answer(
            413,
            "body_too_large",
            &format!("a body of {len} bytes exceeds the limit of {max_body_bytes}"),
        ));
    }
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any bytes: a head, "not yet", or a typed answer; never a panic.
        #[test]
        fn any_bytes_parse_or_get_an_answer(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            match parse_head(&bytes) {
                Ok(Some((len, _))) => prop_assert!(len <= bytes.len()),
                Ok(None) => {}
                Err(ReadError::Answer(response)) => prop_assert!([400, 431, 505].contains(&response.status())),
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }

        /// Heads that are HTTP with random header values still parse or are refused.
        #[test]
        fn random_header_values_never_panic(value in "[ -~]{0,64}", length in "[0-9a-z-]{0,24}") {
            let text = format!("POST /prepare HTTP/1.1\r\nX-Any: {value}\r\nContent-Length: {length}\r\n\r\n");
            if let Ok(Some((_, head))) = parse_head(text.as_bytes()) {
                let _ = body_length(&head.headers, 1 << 20);
            }
        }
    }

    fn head(text: &str) -> Result<Option<(usize, Head)>, ReadError> {
        parse_head(text.as_bytes())
    }

    fn status(result: Result<impl Sized, ReadError>) -> u16 {
        match result {
            Err(ReadError::Answer(response)) => response.status(),
            Err(other) => panic!("{other:?}"),
            Ok(_) => 0,
        }
    }

    #[test]
    fn heads_parse_and_partial_heads_wait() {
        assert!(head("POST /prepare HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let (len, parsed) =
            head("POST /p?x=1 HTTP/1.1\r\nConnection: close\r\nExpect: 100-continue\r\n\r\nbody").unwrap().unwrap();
        assert_eq!(len, 65);
        assert_eq!((parsed.method.as_str(), parsed.target.as_str()), ("POST", "/p?x=1"));
        assert!(parsed.wants_close && parsed.expects_continue && !parsed.http_1_0);
        let (_, old) = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(old.http_1_0 && old.wants_close);
    }

    #[test]
    fn malformed_heads_get_typed_answers() {
        assert_eq!(status(head("GARBAGE\r\n\r\n")), 400);
        assert_eq!(status(head("GET / HTTP/1.1\r\nBad Header\r\n\r\n")), 400);
        assert_eq!(status(head("GET / HTTP/2.0\r\n\r\n")), 505);
        assert_eq!(status(head("NOT HTTP AT ALL\r\n\r\n")), 400);
        let many: String = (0..70).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(status(head(&format!("GET / HTTP/1.1\r\n{many}\r\n"))), 431);
    }

    #[test]
    fn body_lengths_are_checked() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
        };
        assert_eq!(body_length(&h(&[]), 10).ok(), Some(0));
        assert_eq!(body_length(&h(&[("Content-Length", "10")]), 10).ok(), Some(10));
        assert_eq!(status(body_length(&h(&[("Content-Length", "11")]), 10)), 413);
        assert_eq!(status(body_length(&h(&[("content-length", "99999999999999999999999")]), 10)), 413);
        assert_eq!(status(body_length(&h(&[("Content-Length", "-1")]), 10)), 400);
        assert_eq!(status(body_length(&h(&[("Content-Length", "1"), ("Content-Length", "2")]), 10)), 400);
        assert_eq!(status(body_length(&h(&[("Transfer-Encoding", "chunked")]), 10)), 411);
    }
}
