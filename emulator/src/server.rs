//! The hyper server: routing, auth, validation, faults and the paced streaming body.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::request::{mask_key, validate, ApiError};
use crate::scenario::{Fault, Scenario};
use crate::schedule::{plan, Stalls, Tail};
use crate::sent::{SendLog, SendSchedule};
use crate::{render, EmulatorConfig, EmulatorError, EmulatorHandle, EmulatorStats, SeenRequest};
use herald::tts::{AudioFormat, MODELS};

/// Error carried by a body stream we break on purpose.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(&'static str);

type Body = BoxBody<Bytes, BodyError>;

/// State shared by all connections.
pub(crate) struct Shared {
    cfg: EmulatorConfig,
    base: Scenario,
    stats: Mutex<EmulatorStats>,
    /// Requests that reached the fault stage, per scenario key (drives `fail=…xN`).
    counters: Mutex<HashMap<String, u64>>,
    shutdown: watch::Receiver<bool>,
    next_id: AtomicU64,
    /// When each write of each 200 audio response went out.
    pub(crate) sent: SendLog,
}

impl Shared {
    pub(crate) fn stats_snapshot(&self) -> EmulatorStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn with_stats(&self, key: &str, f: impl FnOnce(&mut crate::ScenarioStats)) {
        if let Ok(mut s) = self.stats.lock() {
            f(s.scenarios.entry(key.to_string()).or_default());
        }
    }

    fn count_request(&self, key: &str) {
        if let Ok(mut s) = self.stats.lock() {
            s.requests += 1;
            s.scenarios.entry(key.to_string()).or_default().requests += 1;
        }
    }

    fn count_status(&self, key: &str, status: u16) {
        if let Ok(mut s) = self.stats.lock() {
            *s.statuses.entry(status).or_default() += 1;
            *s.scenarios
                .entry(key.to_string())
                .or_default()
                .statuses
                .entry(status)
                .or_default() += 1;
        }
    }
}

pub(crate) async fn start(cfg: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
    if !cfg.listen.ip().is_loopback() && !cfg.allow_remote {
        return Err(EmulatorError::NotLoopback(cfg.listen));
    }
    let base = Scenario::parse(&cfg.default_scenario)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| EmulatorError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EmulatorError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        cfg,
        base,
        stats: Mutex::new(EmulatorStats::default()),
        counters: Mutex::new(HashMap::new()),
        shutdown: shutdown_rx.clone(),
        next_id: AtomicU64::new(1),
        sent: SendLog::default(),
    });
    let accept = tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx));
    Ok(EmulatorHandle {
        addr,
        shared,
        shutdown_tx,
        accept,
    })
}

/// Resolves when shutdown is asked for or the handle is gone.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped(shutdown.clone()) => return,
        };
        let (stream, _peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                if shared.cfg.log_requests {
                    eprintln!("herald-emulator: accept failed: {e}");
                }
                // E.g. out of file descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let stop = stopped(shutdown.clone());
        tokio::spawn(async move {
            let svc_shared = shared.clone();
            let conn = http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| handle(req, svc_shared.clone())),
            );
            tokio::select! {
                _ = conn => {}
                _ = stop => {}
            }
        });
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn json_response(status: u16, body: String, request_id: &str) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert("x-request-id", v);
    }
    r
}

/// Splits `/SCENARIO/v1/REST` or `/v1/REST` into (scenario, REST).
fn split_path(path: &str) -> Option<(&str, &str)> {
    if let Some(rest) = path.strip_prefix("/v1") {
        if rest.is_empty() || rest.starts_with('/') {
            return Some(("", rest));
        }
    }
    let trimmed = path.strip_prefix('/')?;
    let (seg, rest) = trimmed.split_once('/')?;
    let rest = rest.strip_prefix("v1")?;
    (rest.is_empty() || rest.starts_with('/')).then_some((seg, rest))
}

struct Ctx {
    shared: Arc<Shared>,
    key: String,
    request_id: String,
    started: Instant,
    line: String,
}

impl Ctx {
    fn log(&self, outcome: &str) {
        if self.shared.cfg.log_requests {
            eprintln!(
                "herald-emulator: {} -> {outcome} ({} ms)",
                self.line,
                self.started.elapsed().as_millis()
            );
        }
    }

    fn error(&self, e: &ApiError) -> Response<Body> {
        self.shared.count_status(&self.key, e.status);
        self.log(&format!("{} {}", e.status, e.message));
        json_response(e.status, e.body(), &self.request_id)
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let request_id = format!("req_emu{id:08x}");
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let (key, rest) = match split_path(&path) {
        Some((k, r)) => (k.to_string(), r.to_string()),
        None => (String::new(), String::new()),
    };
    shared.count_request(&key);
    let ctx = Ctx {
        shared: shared.clone(),
        key: key.clone(),
        request_id,
        started,
        line: format!("{method} {path}"),
    };
    let route = match (&method, rest.as_str()) {
        (&Method::POST, "/audio/speech") => Route::Speech,
        (&Method::GET, "/models") => Route::Models,
        _ => {
            return Ok(ctx.error(&ApiError {
                status: 404,
                message: format!("Invalid URL ({method} {path})"),
                kind: "invalid_request_error",
                param: None,
                code: None,
            }))
        }
    };
    let sc = match Scenario::parse_onto(shared.base.clone(), &key) {
        Ok(sc) => sc,
        Err(e) => {
            return Ok(ctx.error(&ApiError::invalid(
                e.to_string(),
                None,
                Some("emulator_scenario"),
            )))
        }
    };
    if let Err(e) = check_auth(&req, &shared.cfg.api_key) {
        return Ok(ctx.error(&e));
    }
    match route {
        Route::Models => Ok(models(&ctx)),
        Route::Speech => Ok(speech(req, ctx, sc).await),
    }
}

enum Route {
    Speech,
    Models,
}

fn presented_key(req: &Request<Incoming>) -> Option<String> {
    let h = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, key) = h.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim().to_string())
}

fn unauthorized(presented: &str) -> ApiError {
    ApiError {
        status: 401,
        message: format!(
            "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
            mask_key(presented)
        ),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    }
}

fn check_auth(req: &Request<Incoming>, expected: &str) -> Result<(), ApiError> {
    match presented_key(req) {
        None => Err(ApiError {
            status: 401,
            message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }),
        Some(k) if k == expected => Ok(()),
        Some(k) => Err(unauthorized(&k)),
    }
}

fn models(ctx: &Ctx) -> Response<Body> {
    let data: Vec<_> = MODELS
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 1_699_046_015u64, "owned_by": "system"}))
        .collect();
    ctx.shared.count_status(&ctx.key, 200);
    ctx.log("200 models");
    json_response(
        200,
        serde_json::json!({"object": "list", "data": data}).to_string(),
        &ctx.request_id,
    )
}

/// The error a `fail=STATUS` scenario answers with (bodies as the real API words them).
fn injected(status: u16, presented: &str) -> ApiError {
    let (message, kind, code): (String, &'static str, Option<&'static str>) = match status {
        401 => return unauthorized(presented),
        403 => (
            "Country, region, or territory not supported".into(),
            "request_forbidden",
            Some("unsupported_country_region_territory"),
        ),
        429 => (
            "Rate limit reached for requests (emulated). Please try again in 1s.".into(),
            "requests",
            Some("rate_limit_exceeded"),
        ),
        500 => (
            "The server had an error while processing your request. Sorry about that!".into(),
            "server_error",
            None,
        ),
        503 => (
            "The engine is currently overloaded, please try again later.".into(),
            "server_error",
            None,
        ),
        s if s >= 500 => (format!("Emulated server error {s}."), "server_error", None),
        s => (
            format!("Emulated client error {s}."),
            "invalid_request_error",
            None,
        ),
    };
    ApiError {
        status,
        message,
        kind,
        param: None,
        code,
    }
}

async fn speech(req: Request<Incoming>, ctx: Ctx, sc: Scenario) -> Response<Body> {
    let presented = presented_key(&req).unwrap_or_default();
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let raw = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return ctx.error(&ApiError::invalid(
                format!("Could not read the request body (limit 1 MiB): {e}"),
                None,
                None,
            ))
        }
    };
    let body = match validate(&raw) {
        Ok(b) => b,
        Err(e) => return ctx.error(&e),
    };
    ctx.shared.with_stats(&ctx.key, |s| {
        if s.seen.len() >= 100 {
            s.seen.remove(0);
        }
        s.seen.push(SeenRequest {
            body: body.clone(),
            accept,
        });
    });
    let nth = {
        let mut c = ctx
            .shared
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = c.entry(ctx.key.clone()).or_default();
        *n += 1;
        *n
    };
    if let Some(f) = sc.fail {
        if f.times.is_none_or(|t| nth <= t) {
            let e = injected(f.status, &presented);
            let mut r = ctx.error(&e);
            if matches!(f.status, 429 | 503) {
                let h = r.headers_mut();
                if let Some(s) = sc.retry_after_s {
                    h.insert("retry-after", HeaderValue::from(s));
                }
                if let Some(ms) = sc.retry_after_ms {
                    h.insert("retry-after-ms", HeaderValue::from(ms));
                }
            }
            return r;
        }
    }
    match sc.fault {
        Some(Fault::Hang) => {
            ctx.shared.with_stats(&ctx.key, |s| s.hangs += 1);
            ctx.log("hang (never answering)");
            stopped(ctx.shared.shutdown.clone()).await;
            return json_response(503, String::new(), &ctx.request_id);
        }
        Some(Fault::Garbage) => {
            tokio::time::sleep_until(ctx.started + sc.ttfb).await;
            ctx.shared.count_status(&ctx.key, 200);
            ctx.log("200 garbage html");
            let mut r = Response::new(full(
                "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n",
            ));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            return r;
        }
        Some(Fault::Json200) => {
            tokio::time::sleep_until(ctx.started + sc.ttfb).await;
            ctx.shared.count_status(&ctx.key, 200);
            ctx.log("200 json error body");
            let e = injected(500, &presented);
            return json_response(200, e.body(), &ctx.request_id);
        }
        _ => {}
    }

    let (input, voice, speed, format) = (
        body.input.clone(),
        body.voice.clone(),
        body.speed,
        body.format,
    );
    let sc_render = sc.clone();
    let rendered =
        tokio::task::spawn_blocking(move || render(&input, &voice, speed, format, &sc_render))
            .await;
    let rendered = match rendered {
        Ok(Ok(r)) => r,
        Ok(Err(EmulatorError::Scenario { reason, .. })) => {
            return ctx.error(&ApiError::invalid(reason, None, Some("emulator_scenario")))
        }
        Ok(Err(e)) => {
            return ctx.error(&ApiError {
                status: 500,
                message: format!("emulator could not synthesize: {e}"),
                kind: "server_error",
                param: None,
                code: None,
            })
        }
        Err(e) => {
            return ctx.error(&ApiError {
                status: 500,
                message: format!("emulator synthesis task failed: {e}"),
                kind: "server_error",
                param: None,
                code: None,
            })
        }
    };
    let seed = stall_seed(&sc, ctx.shared.cfg.seed, &ctx.key, nth);
    let horizon = sc.ttfb + rendered.audio.div_f64(sc.speed) + Duration::from_secs(1);
    let stalls = Stalls::new(&sc, seed, horizon);
    let total = rendered.body.len();
    let p = plan(
        format,
        rendered.body,
        &rendered.pages,
        &rendered.page_audio_end,
        &rendered.page_media,
        &sc,
        &stalls,
    );
    // Headers leave with the first byte, as from the real API (TTFB = time to headers).
    let first_at = p.pieces.first().map_or(sc.ttfb, |x| x.at);
    tokio::time::sleep_until(ctx.started + first_at).await;

    ctx.shared.sent.begin(
        &ctx.key,
        SendSchedule {
            request_id: ctx.request_id.clone(),
            format,
            rate: match format {
                AudioFormat::Opus => 48_000,
                AudioFormat::Pcm => crate::RATE,
            },
            arrived: ctx.started.into_std(),
            writes: Vec::new(),
            media_total: rendered.media_total,
            body_bytes: total as u64,
            sent_bytes: 0,
            truncated: false,
        },
    );
    // Each frame carries what its write completes (`Piece::media`), logged when hyper takes
    // it for the socket: the channel may hold frames the client has not yet made room for.
    type Item = (Result<Frame<Bytes>, BodyError>, Option<u64>);
    let (tx, mut rx) = mpsc::channel::<Item>(64);
    let shared = ctx.shared.clone();
    let key = ctx.key.clone();
    let started = ctx.started;
    tokio::spawn(async move {
        let shutdown = shared.shutdown.clone();
        for piece in p.pieces {
            tokio::select! {
                _ = tokio::time::sleep_until(started + piece.at) => {}
                _ = stopped(shutdown.clone()) => return,
            }
            if tx
                .send((Ok(Frame::data(piece.bytes)), piece.media))
                .await
                .is_err()
            {
                shared.with_stats(&key, |s| s.client_disconnects += 1);
                return;
            }
        }
        match p.tail {
            Tail::End => shared.with_stats(&key, |s| s.bodies_completed += 1),
            Tail::Cut => {
                shared.with_stats(&key, |s| s.bodies_broken += 1);
                // hyper discards unflushed output when a body fails, so let what was sent
                // reach the socket first: the client must see audio, then the break.
                while tx.capacity() < tx.max_capacity() && !tx.is_closed() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx
                    .send((Err(BodyError("emulated connection drop")), None))
                    .await;
            }
            Tail::Hang => {
                shared.with_stats(&key, |s| s.bodies_broken += 1);
                tokio::select! {
                    _ = tx.closed() => {}
                    _ = stopped(shutdown.clone()) => {}
                }
            }
        }
    });
    let (log, key, request_id) = (ctx.shared.clone(), ctx.key.clone(), ctx.request_id.clone());
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|item| {
            item.map(|(frame, media)| {
                if let Some(bytes) = frame.as_ref().ok().and_then(|f| f.data_ref()) {
                    let at = started.elapsed();
                    log.sent.wrote(&key, &request_id, at, bytes.len(), media);
                }
                frame
            })
        })
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    let ct = match format {
        AudioFormat::Opus => "audio/ogg",
        AudioFormat::Pcm => "audio/pcm",
    };
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        r.headers_mut().insert("x-request-id", v);
    }
    ctx.shared.count_status(&ctx.key, 200);
    ctx.log(&format!(
        "200 {} {total} B, {:.2} s audio, voice {}, {} chars{}",
        format.as_str(),
        rendered.audio.as_secs_f64(),
        body.voice,
        body.input.chars().count(),
        match sc.fault {
            Some(Fault::Drop) => " (will drop)",
            Some(Fault::HangBody) => " (will hang mid-body)",
            Some(Fault::Corrupt(_)) => " (one page corrupted)",
            _ => "",
        }
    ));
    r
}

/// The stall RNG's seed for the `nth` request on `key`: mixed with both, so successive
/// requests and parallel tests differ; `shared-stalls` leaves the key out, so a bench can
/// run two clients (two `id=`s) through the same sequence of stall patterns.
fn stall_seed(sc: &Scenario, default_seed: u64, key: &str, nth: u64) -> u64 {
    let seed = sc.seed.unwrap_or(default_seed) ^ nth.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    if sc.shared_stalls {
        seed
    } else {
        seed ^ fnv1a(key)
    }
}

/// Stable string hash (std's hasher is not promised to stay the same across releases).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_scenario_and_route() {
        assert_eq!(split_path("/v1/audio/speech"), Some(("", "/audio/speech")));
        assert_eq!(
            split_path("/wifi,seed=3/v1/audio/speech"),
            Some(("wifi,seed=3", "/audio/speech"))
        );
        assert_eq!(split_path("/fast/v1/models"), Some(("fast", "/models")));
        assert_eq!(split_path("/fast/v2/models"), None);
        assert_eq!(split_path("/v1x/models"), None);
    }

    #[test]
    fn stall_seeds_mix_key_and_request_unless_shared() {
        let sc = Scenario::parse("wifi,seed=3").unwrap();
        // The mix existing tests and recorded benchmarks depend on.
        assert_eq!(
            stall_seed(&sc, 0, "wifi,seed=3", 2),
            3 ^ fnv1a("wifi,seed=3") ^ 2u64.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        );
        assert_ne!(stall_seed(&sc, 0, "a", 1), stall_seed(&sc, 0, "b", 1));
        assert_ne!(stall_seed(&sc, 0, "a", 1), stall_seed(&sc, 0, "a", 2));
        let shared = Scenario::parse("wifi,seed=3,shared-stalls").unwrap();
        assert_eq!(
            stall_seed(&shared, 0, "a", 1),
            stall_seed(&shared, 0, "b", 1)
        );
        assert_ne!(
            stall_seed(&shared, 0, "a", 1),
            stall_seed(&shared, 0, "a", 2)
        );
        let other_seed = Scenario::parse("wifi,seed=4,shared-stalls").unwrap();
        assert_ne!(
            stall_seed(&shared, 0, "a", 1),
            stall_seed(&other_seed, 0, "a", 1)
        );
        // Without seed= the emulator's seed is used.
        let shared = Scenario::parse("wifi,shared-stalls").unwrap();
        assert_ne!(
            stall_seed(&shared, 9, "a", 1),
            stall_seed(&shared, 8, "a", 1)
        );
    }
}
