//! The HTTP server's bounds over real sockets on 127.0.0.1: body and head
//! size, slow and idle clients, the connection bound, malformed requests,
//! handler panics and a graceful stop. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dtc::http::{Request, Response, Router, Server, ServerConfig};

fn echo() -> Router {
    Router::new()
        .post("/echo", |r: &Request| Response::bytes(200, "application/octet-stream", r.body().to_vec()))
        .get("/hello", |_: &Request| Response::json(200, &serde_json::json!({"hello": "world"})))
        .get("/panic", |_: &Request| -> Response { panic!("handler bug") })
}

fn start(config: ServerConfig) -> Server {
    Server::start("127.0.0.1:0", config, echo()).unwrap()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
}

/// One answer: status, head text, body. Reads the head a byte at a time and
/// then exactly its body, so a pipelined answer behind it stays in the
/// socket for the next call (a buffered read would swallow it). Bounded by
/// 64 KiB of head, 1 MiB of body and the socket's read timeout.
fn read_answer(stream: &mut TcpStream) -> Option<(u16, String, Vec<u8>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= 64 << 10 {
            return None;
        }
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => head.push(byte[0]),
        }
    }
    let head = String::from_utf8_lossy(&head[..head.len() - 4]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if length > 1 << 20 {
        return None;
    }
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((status, head, body))
}

fn error_code(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    value["error"]["code"].as_str().unwrap().to_owned()
}

/// True once the peer has closed (EOF or reset) within the read timeout.
fn closed(stream: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(stream.read_to_end(&mut rest), Ok(_) | Err(_)) && stream.read(&mut [0u8; 1]).map_or(true, |n| n == 0)
}

#[test]
fn serves_requests_with_keep_alive_and_pipelining() {
    let server = start(ServerConfig::default());
    let mut stream = connect(server.local_addr());
    let two = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    stream.write_all(two.as_bytes()).unwrap();
    let (status, _, body) = read_answer(&mut stream).unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"abc"[..]));
    let (status, head, body) = read_answer(&mut stream).unwrap();
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"));
    assert_eq!(body, br#"{"hello":"world"}"#);
    // Same connection, a third request.
    stream.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut stream).unwrap().0, 200);
    assert!(closed(&mut stream));
    assert_eq!(server.stats().requests, 3);
}

#[test]
fn an_http_client_gets_json_errors_for_unknown_routes_and_methods() {
    let server = start(ServerConfig::default());
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let base = format!("http://{}", server.local_addr());
    let mut answer = agent.get(&format!("{base}/nope")).call().unwrap();
    assert_eq!(answer.status().as_u16(), 404);
    assert_eq!(error_code(&answer.body_mut().read_to_vec().unwrap()), "not_found");
    let mut answer = agent.get(&format!("{base}/echo")).call().unwrap();
    assert_eq!(answer.status().as_u16(), 405);
    assert_eq!(answer.headers().get("allow").unwrap(), "POST");
    assert_eq!(error_code(&answer.body_mut().read_to_vec().unwrap()), "method_not_allowed");
    let mut answer = agent.post(&format!("{base}/echo")).send(&b"ping"[..]).unwrap();
    assert_eq!(answer.body_mut().read_to_vec().unwrap(), b"ping");
}

#[test]
fn an_oversized_body_is_refused_before_it_is_read() {
    let server = start(ServerConfig { max_body_bytes: 1024, ..ServerConfig::default() });
    let mut stream = connect(server.local_addr());
    // Announce 10 MB, send only the head: the answer must not wait for the body.
    stream.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n").unwrap();
    let (status, head, body) = read_answer(&mut stream).unwrap();
    assert_eq!(status, 413);
    assert_eq!(error_code(&body), "body_too_large");
    assert!(head.contains("Connection: close"));
    assert_eq!(server.stats().requests, 0, "the handler never saw it");
    // A body at the limit is fine.
    let mut stream = connect(server.local_addr());
    stream.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1024\r\n\r\n").unwrap();
    stream.write_all(&[b'x'; 1024]).unwrap();
    assert_eq!(read_answer(&mut stream).unwrap().0, 200);
}

#[test]
fn a_client_sending_its_head_slowly_is_cut_off_in_bounded_time() {
    let server = start(ServerConfig { head_timeout: Duration::from_millis(300), ..ServerConfig::default() });
    let mut stream = connect(server.local_addr());
    let started = Instant::now();
    let head = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    // One byte every 20 ms would take 1.5 s; the server allows 300 ms.
    let mut cut = false;
    for byte in head {
        if stream.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let answer = read_answer(&mut stream);
    let elapsed = started.elapsed();
    assert!(cut || answer.as_ref().is_some_and(|(status, _, _)| *status == 408), "{answer:?}");
    if let Some((_, _, body)) = answer {
        assert_eq!(error_code(&body), "request_timeout");
    }
    assert!(elapsed < Duration::from_secs(3), "cut off after {elapsed:?}");
    assert!(closed(&mut stream));
}

#[test]
fn a_slow_body_and_an_idle_connection_are_cut_off() {
    let config = ServerConfig {
        head_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let server = start(config);
    let mut stream = connect(server.local_addr());
    stream.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc").unwrap();
    let (status, _, body) = read_answer(&mut stream).unwrap();
    assert_eq!((status, error_code(&body).as_str()), (408, "request_timeout"));
    // Connected, never sends: closed after the idle time, without an answer.
    let mut silent = connect(server.local_addr());
    let started = Instant::now();
    assert!(closed(&mut silent));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn connections_over_the_bound_are_answered_429() {
    let server = start(ServerConfig { max_connections: 2, ..ServerConfig::default() });
    let held: Vec<TcpStream> = (0..2).map(|_| connect(server.local_addr())).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().open_connections < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.stats().open_connections, 2);
    let mut third = connect(server.local_addr());
    third.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (status, _, body) = read_answer(&mut third).unwrap();
    assert_eq!((status, error_code(&body).as_str()), (429, "too_many_connections"));
    assert!(server.stats().rejected >= 1);
    // Once one closes, a new connection is served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stats().open_connections > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut fourth = connect(server.local_addr());
    fourth.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut fourth).unwrap().0, 200);
}

#[test]
fn malformed_requests_get_json_errors_and_the_connection_closes() {
    let server = start(ServerConfig { max_head_bytes: 1024, ..ServerConfig::default() });
    let huge = format!("GET /hello HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(2000));
    let cases: [(&[u8], u16, &str); 6] = [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
        (b"GET /hello HTTP/1.1\r\nNo-Colon-Here\r\n\r\n", 400, "bad_request"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400, "bad_request"),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 411, "length_required"),
        (b"GET /hello HTTP/3.0\r\n\r\n", 505, "http_version_not_supported"),
        (huge.as_bytes(), 431, "head_too_large"),
    ];
    for (request, expected, code) in cases {
        let mut stream = connect(server.local_addr());
        stream.write_all(request).unwrap();
        let (status, _, body) = read_answer(&mut stream).unwrap_or_else(|| panic!("no answer to {request:?}"));
        assert_eq!((status, error_code(&body).as_str()), (expected, code), "{}", String::from_utf8_lossy(request));
        assert!(closed(&mut stream));
    }
    assert_eq!(server.stats().requests, 0);
}

#[test]
fn a_head_request_gets_no_body() {
    let router = Router::new().route("HEAD", "/hello", |_: &Request| Response::json(200, &"x"));
    let server = Server::start("127.0.0.1:0", ServerConfig::default(), router).unwrap();
    let mut stream = connect(server.local_addr());
    stream.write_all(b"HEAD /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let _ = stream.read_to_end(&mut all);
    let text = String::from_utf8(all).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("Content-Length: 3\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "no body after the head: {text:?}");
}

#[test]
fn a_panicking_handler_is_answered_500_and_the_pool_goes_on() {
    let server = start(ServerConfig { handler_threads: 1, ..ServerConfig::default() });
    for _ in 0..3 {
        let mut stream = connect(server.local_addr());
        stream.write_all(b"GET /panic HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (status, _, body) = read_answer(&mut stream).unwrap();
        assert_eq!((status, error_code(&body).as_str()), (500, "internal"));
    }
    let mut stream = connect(server.local_addr());
    stream.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut stream).unwrap().0, 200);
}

#[test]
fn expect_continue_gets_a_100_before_the_body() {
    let server = start(ServerConfig::default());
    let mut stream = connect(server.local_addr());
    stream.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n").unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"ok").unwrap();
    let (status, _, body) = read_answer(&mut stream).unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
}

#[test]
fn stop_finishes_the_request_in_progress_closes_idle_connections_and_joins() {
    let (started_tx, started_rx) = crossbeam_channel::bounded::<()>(1);
    let router = Router::new().get("/slow", move |_: &Request| {
        let _ = started_tx.send(());
        std::thread::sleep(Duration::from_millis(300));
        Response::json(200, &"done")
    });
    let server = Arc::new(Server::start("127.0.0.1:0", ServerConfig::default(), router).unwrap());
    let addr = server.local_addr();
    let mut idle = connect(addr);
    let client = std::thread::spawn(move || {
        let mut stream = connect(addr);
        stream.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        read_answer(&mut stream)
    });
    started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let stopper = Arc::clone(&server);
    let stopping = std::thread::spawn(move || stopper.stop());
    let (status, head, body) = client.join().unwrap().expect("the request in progress is answered");
    assert_eq!((status, body.as_slice()), (200, &br#""done""#[..]));
    assert!(head.contains("Connection: close"));
    stopping.join().unwrap();
    assert!(closed(&mut idle), "the idle connection was closed");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(), "no longer listening");
    server.stop();
}
