//! A small blocking HTTP/1.1 server with every resource bounded, shared by
//! the reference participant (`dtc participant`) and the coordinator service
//! (`dtc serve`): [`Server`], a [`Router`] on method and exact path, and
//! [`Request`]/[`Response`] with JSON helpers. No async runtime.
//!
//! # Bounds and how they are enforced
//!
//! | bound | how |
//! | --- | --- |
//! | handler threads | a fixed pool of [`ServerConfig::handler_threads`] threads takes requests from a bounded queue; a panic in a handler is answered `500` and the thread goes on |
//! | open connections | at most [`ServerConfig::max_connections`], each on its own thread (only reading and writing: handlers run in the pool). One more is accepted, answered `429 too_many_connections` and closed (after reading briefly, so the answer is not lost to a reset); at most 4 such answers at a time, beyond that a connection is closed unanswered |
//! | body size | `Content-Length` above [`ServerConfig::max_body_bytes`] is answered `413` before any body byte is read; chunked bodies are answered `411` |
//! | head size | [`ServerConfig::max_head_bytes`] and 64 headers; beyond that `431` |
//! | slow clients | every read is given the time left until a deadline: a request's head must arrive within [`ServerConfig::head_timeout`] of its first byte, its body within [`ServerConfig::body_timeout`] of its head (else `408` and close: a client trickling one byte at a time cannot hold a connection longer); a connection with no request in progress is closed after [`ServerConfig::idle_timeout`] (its first request must start within `head_timeout`); each write of an answer has [`ServerConfig::write_timeout`] |
//! | errors | every error answer the server or router makes is JSON `{"error": {"code": ..., "message": ...}}` |
//! | stop | [`Server::stop`] from any thread: stops accepting, closes idle connections at once, lets requests in progress finish, joins every thread |
//!
//! # Why not tiny_http
//!
//! tiny_http 0.12 (the usual blocking server crate, and the newest release)
//! cannot give three of these bounds. It has no socket timeouts. Setting
//! `SO_RCVTIMEO` on the listening socket before handing it over is inherited
//! by accepted sockets on Linux, but also makes `accept` time out, and
//! tiny_http's accept thread treats that error as fatal: the server stops
//! accepting after the first idle interval (tried: it no longer answers).
//! It accepts every connection and gives each a thread of an unbounded pool,
//! so open connections cannot be bounded; and its threads are detached, so a
//! stop cannot join them (an idle keep-alive connection's thread blocks in
//! `read` forever). Its value otherwise is parsing, which this module takes
//! from `httparse` (hyper's request parser: zero-copy, fuzzed, no
//! dependencies). What remains here is the part tiny_http would not let us
//! control: the accept loop, per-read deadlines, `Content-Length` bodies,
//! keep-alive and pipelining, and a clean stop.

mod connection;
mod message;
mod router;
mod server;

pub use message::{Request, Response};
pub use router::{Handler, Router};
pub use server::{Server, ServerConfig, ServerError, ServerStats};
