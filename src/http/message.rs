//! Requests as handlers see them, responses as they build them, and the JSON
//! helpers both sides use.

use std::net::SocketAddr;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// One parsed request with its whole body (bounded by
/// [`ServerConfig::max_body_bytes`](super::ServerConfig::max_body_bytes)).
#[derive(Debug, Clone)]
pub struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: Option<String>,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
    pub(super) remote: Option<SocketAddr>,
}

impl Request {
    /// A request built by hand, for testing a handler without a socket.
    pub fn new(method: &str, target: &str, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Request {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (target.to_owned(), None),
        };
        Request {
            method: method.to_owned(),
            path,
            query,
            headers: headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
            body: body.into(),
            remote: None,
        }
    }

    /// The method, as sent (`GET`, `POST`, ...).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path of the target, without the query (not percent-decoded).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw query string after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a
    /// space). `None` when absent or not valid UTF-8 after decoding.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.as_deref()?;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(key)? == name { percent_decode(value) } else { None }
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Every header, in the order sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The peer's address (`None` for a request built by hand).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote
    }

    /// The body parsed as JSON, or the `400 invalid_json` answer to send.
    // The Err is the whole answer, ready to return from a handler.
    #[allow(clippy::result_large_err)]
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Response> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Response::error(400, "invalid_json", &format!("the body is not the expected JSON: {e}")))
    }
}

/// `%XX` and `+` decoding; `None` for a bad escape or non-UTF-8 result.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// An answer: a status, headers and a body, sent with `Content-Length`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The body of every error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl Response {
    /// An empty answer with this status.
    pub fn empty(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    /// `body` with this status and content type.
    pub fn bytes(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response::empty(status).with_header("Content-Type", content_type).with_body(body)
    }

    /// `value` as a JSON body. A value that cannot be serialized (a map
    /// with non-string keys) gives a `500 internal` error answer instead.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::bytes(status, "application/json", body),
            Err(e) => Response::error(500, "internal", &format!("the answer could not be encoded: {e}")),
        }
    }

    /// An error answer: `{"error": {"code": code, "message": message}}`.
    pub fn error(status: u16, code: &str, message: &str) -> Response {
        Response::json(status, &ErrorBody { error: ErrorDetail { code, message } })
    }

    /// Adds a header (`Content-Length` and `Connection` are the server's).
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The bytes on the wire. `close` adds `Connection: close`.
    pub(super) fn encode(&self, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).as_bytes());
        for (name, value) in &self.headers {
            let reserved = name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("connection");
            // A header with a line break would split the answer: drop it.
            let unsafe_text = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n');
            if reserved || unsafe_text(name) || unsafe_text(value) {
                continue;
            }
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// The reason phrase of a status (clients ignore it; humans read it).
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        425 => "Too Early",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let request = Request::new("GET", "/branches?state=rolled_back&x=a%20b+c&bad=%zz", &[], "");
        assert_eq!(request.path(), "/branches");
        assert_eq!(request.query_param("state").as_deref(), Some("rolled_back"));
        assert_eq!(request.query_param("x").as_deref(), Some("a b c"));
        assert_eq!(request.query_param("bad"), None);
        assert_eq!(request.query_param("missing"), None);
    }

    #[test]
    fn error_answers_are_json_and_headers_cannot_split_the_answer() {
        let response = Response::error(413, "body_too_large", "no").with_header("X-Evil", "a\r\nSet-Cookie: 1");
        let wire = String::from_utf8(response.encode(true)).unwrap();
        assert!(wire.starts_with("HTTP/1.1 413 Content Too Large\r\n"));
        assert!(!wire.contains("Set-Cookie"));
        assert!(wire.ends_with(r#"{"error":{"code":"body_too_large","message":"no"}}"#));
        assert!(wire.contains("Connection: close\r\n"));
    }
}
