//! Method + exact path → handler. Nothing more: no patterns, no middleware.

use super::message::{Request, Response};

/// Answers requests; a plain closure `Fn(&Request) -> Response` is one.
///
/// Called from the server's handler threads, several at once: it must be
/// `Sync`. A panic is caught and answered `500 internal`.
pub trait Handler: Send + Sync + 'static {
    /// The answer to `request`.
    fn handle(&self, request: &Request) -> Response;
}

impl<F> Handler for F
where
    F: Fn(&Request) -> Response + Send + Sync + 'static,
{
    fn handle(&self, request: &Request) -> Response {
        self(request)
    }
}

/// Routes on the exact method and path (the query is ignored). An unknown
/// path is `404 not_found`; a known path with another method is `405
/// method_not_allowed` with an `Allow` header.
///
/// ```
/// use dtc::http::{Request, Response, Router, Handler};
/// let router = Router::new()
///     .get("/healthz", |_: &Request| Response::json(200, &serde_json::json!({"ok": true})))
///     .post("/prepare", |r: &Request| Response::bytes(200, "application/json", r.body().to_vec()));
/// assert_eq!(router.handle(&Request::new("GET", "/healthz", &[], "")).status(), 200);
/// assert_eq!(router.handle(&Request::new("GET", "/prepare", &[], "")).status(), 405);
/// assert_eq!(router.handle(&Request::new("GET", "/nope", &[], "")).status(), 404);
/// ```
#[derive(Default)]
pub struct Router {
    routes: Vec<(String, String, Box<dyn Handler>)>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<_> = self.routes.iter().map(|(m, p, _)| format!("{m} {p}")).collect();
        f.debug_struct("Router").field("routes", &routes).finish()
    }
}

impl Router {
    /// No routes.
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds `method path → handler` (a later duplicate is never reached).
    pub fn route(mut self, method: &str, path: &str, handler: impl Handler) -> Router {
        self.routes.push((method.to_ascii_uppercase(), path.to_owned(), Box::new(handler)));
        self
    }

    /// `route("GET", ...)`.
    pub fn get(self, path: &str, handler: impl Handler) -> Router {
        self.route("GET", path, handler)
    }

    /// `route("POST", ...)`.
    pub fn post(self, path: &str, handler: impl Handler) -> Router {
        self.route("POST", path, handler)
    }
}

impl Handler for Router {
    fn handle(&self, request: &Request) -> Response {
        let mut allowed: Vec<&str> = Vec::new();
        for (method, path, handler) in &self.routes {
            if path != request.path() {
                continue;
            }
            if method == request.method() {
                return handler.handle(request);
            }
            allowed.push(method);
        }
        if allowed.is_empty() {
            return Response::error(404, "not_found", &format!("no such resource: {}", request.path()));
        }
        let allow = allowed.join(", ");
        Response::error(405, "method_not_allowed", &format!("{} allows {allow}", request.path()))
            .with_header("Allow", &allow)
    }
}
