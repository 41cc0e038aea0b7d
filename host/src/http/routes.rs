//! The routes: the page and its assets, `/metrics`, the JSON API the page reads (a
//! snapshot, an event stream of snapshots, one actor's state and exits) and the three
//! mutations, which run the control socket's own commands (`control::commands::execute`).
//!
//! | route | what |
//! | --- | --- |
//! | `GET /`, `/observer.js`, `/observer.css` | the page |
//! | `GET /metrics` | Prometheus text (`metrics::render`) |
//! | `GET /api/snapshot` | `{host, status, upgrades, activity}` |
//! | `GET /api/events` | server-sent events: a `snapshot` every 500 ms (shared by all streams) and right after a change; at most [`MAX_EVENT_STREAMS`] open at once (503 beyond) |
//! | `GET /api/actors/{name}` | `{actor, state or state_error, recent_exits}` |
//! | `POST /api/install/{version}` | install; the install report |
//! | `POST /api/rollback` | rollback; the report |
//! | `POST /api/make-permanent/{version}` | make permanent |
//!
//! Errors answer `{"error": {"kind", "message"}}` with a status saying what kind: 401/403
//! refused (see `access`), 404 unknown actor, release or route, 409 conflicts with the
//! host's state (an install running, already current, nothing to roll back), 422 a
//! release that cannot be installed as written (manifest, plan), 500 a failed operation.
//!
//! Every response carries `Cache-Control: no-store`, `X-Content-Type-Options: nosniff` and a
//! content security policy allowing only this server's own scripts and styles, in no frame.
//!
//! The timeline is `metrics::upgrades` (binding the server turns metrics on), so it holds
//! every install and rollback of the host, from the page, the control socket or watch mode.

use super::Token;
use super::access::{AccessError, check_host, check_mutation};
use super::assets;
use crate::control::Request;
use crate::control::commands::{CommandError, execute, status_report};
use crate::release::handler::{ReleaseError, ReleaseHandler};
use axum::Json;
use axum::Router;
use axum::extract::{Path, Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::watch;

/// How often the event stream sends a snapshot when nothing changed.
const EVENT_INTERVAL: Duration = Duration::from_millis(500);

/// The most event streams open at once; one more is refused (503) until one closes. Each
/// costs a connection and a task, nothing more (they share one snapshot).
pub const MAX_EVENT_STREAMS: usize = 64;

/// How long a snapshot taken for one event stream is good for the others.
const SNAPSHOT_REUSE: Duration = Duration::from_millis(250);

/// What every request shares.
pub struct Shared {
    handler: Arc<ReleaseHandler>,
    token: Token,
    bound: SocketAddr,
    started_unix_ms: u64,
    /// One permit per open event stream ([`MAX_EVENT_STREAMS`]).
    streams: Arc<tokio::sync::Semaphore>,
    /// Bumped after each change made here: event streams send a snapshot at once.
    changed: watch::Sender<u64>,
    /// The last mutation run here (running or finished).
    activity: Mutex<Option<Activity>>,
    /// The last snapshot sent, when it was taken, and the change generation it saw: event
    /// streams share it, so the host is asked for its status at most once per
    /// [`SNAPSHOT_REUSE`] however many pages are open (the lock is held while one is
    /// taken: the others wait for it rather than ask too).
    last_snapshot: tokio::sync::Mutex<Option<(Instant, u64, Arc<str>)>>,
}

/// A mutation run through this server, as the page shows it.
#[derive(Debug, Clone, Serialize)]
struct Activity {
    /// `install 1.1.0`, `rollback`, `make-permanent 1.1.0`.
    operation: String,
    started_unix_ms: u64,
    running: bool,
    /// Progress lines as they came.
    progress: Vec<String>,
    /// The report, once it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    /// The error, once it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

impl Shared {
    /// The state of a server for `handler`'s host, bound to `bound`.
    pub fn new(handler: Arc<ReleaseHandler>, token: Token, bound: SocketAddr) -> Shared {
        Shared {
            handler,
            token,
            bound,
            started_unix_ms: now_unix_ms(),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_EVENT_STREAMS)),
            changed: watch::channel(0).0,
            activity: Mutex::new(None),
            last_snapshot: tokio::sync::Mutex::new(None),
        }
    }

    /// The snapshot as JSON text for an event: the last one taken when it is younger than
    /// [`SNAPSHOT_REUSE`] and no change was made here since.
    async fn shared_snapshot(&self) -> Arc<str> {
        let mut last = self.last_snapshot.lock().await;
        let generation = *self.changed.borrow();
        if let Some((taken, taken_generation, text)) = last.as_ref()
            && taken.elapsed() < SNAPSHOT_REUSE
            && *taken_generation == generation
        {
            return Arc::clone(text);
        }
        let text: Arc<str> = self.snapshot().await.to_string().into();
        *last = Some((Instant::now(), generation, Arc::clone(&text)));
        text
    }

    fn notify(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// The whole picture the page draws.
    async fn snapshot(&self) -> Value {
        let status = status_report(&self.handler).await;
        let upgrades = crate::metrics::upgrades();
        json!({
            "host": {
                "graft_version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "root": self.handler.root(),
                "started_unix_ms": self.started_unix_ms,
                "now_unix_ms": now_unix_ms(),
            },
            "status": status,
            "upgrades": upgrades,
            "activity": lock(&self.activity).clone(),
        })
    }

    fn begin(&self, operation: String) {
        *lock(&self.activity) = Some(Activity {
            operation,
            started_unix_ms: now_unix_ms(),
            running: true,
            progress: Vec::new(),
            result: None,
            error: None,
        });
        self.notify();
    }

    fn progress(&self, line: String) {
        if let Some(activity) = lock(&self.activity).as_mut() {
            activity.progress.push(line);
        }
        self.notify();
    }

    fn finish(&self, outcome: &Result<Value, CommandError>) {
        if let Some(activity) = lock(&self.activity).as_mut() {
            activity.running = false;
            match outcome {
                Ok(report) => activity.result = Some(report.clone()),
                Err(error) => activity.error = Some(error.to_string()),
            }
        }
        self.notify();
    }
}

/// The routes, checked and headed by [`guard`].
pub fn router(shared: Shared) -> Router {
    let shared = Arc::new(shared);
    Router::new()
        .route("/", get(assets::page))
        .route("/observer.js", get(assets::script))
        .route("/observer.css", get(assets::style))
        .route("/metrics", get(metrics))
        .route("/api/snapshot", get(snapshot))
        .route("/api/events", get(events))
        .route("/api/actors/{name}", get(actor))
        .route("/api/install/{version}", post(install))
        .route("/api/rollback", post(rollback))
        .route("/api/make-permanent/{version}", post(make_permanent))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), guard))
        .with_state(shared)
}

/// Every request: a loopback server's `Host` check; every response: no caching, no
/// sniffing, no framing, nothing but this server's own scripts and styles.
async fn guard(State(shared): State<Arc<Shared>>, request: HttpRequest, next: Next) -> Response {
    let mut response = match check_host(request.headers(), shared.bound) {
        Ok(()) => next.run(request).await,
        Err(error) => ApiError::from(error).into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// A request that failed: its status, a word for scripts, and the message.
#[derive(Debug, Error)]
enum ApiError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{text:?} is not a release version: {source}")]
    BadVersion { text: String, source: semver::Error },
    #[error("no such route: {0} (the API is under /api/, the page at /)")]
    NotFound(String),
    #[error("the operation stopped before it answered: {0}")]
    Task(#[source] tokio::task::JoinError),
    #[error("{limit} event streams are open already; close one (another tab) and retry")]
    TooManyStreams { limit: usize },
}

impl ApiError {
    fn status_and_kind(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Access(error) => (error.status(), error.kind()),
            ApiError::BadVersion { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "bad_version"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Task(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::TooManyStreams { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "too_many_streams")
            }
            ApiError::Command(error) => command_status(error),
        }
    }
}

/// The status and kind of a control command's failure.
fn command_status(error: &CommandError) -> (StatusCode, &'static str) {
    match error {
        CommandError::NoActor(_) => (StatusCode::NOT_FOUND, "no_actor"),
        CommandError::InstallInProgress { .. } => (StatusCode::CONFLICT, "install_in_progress"),
        CommandError::AlreadySuspended(_) | CommandError::NotSuspended(_) => {
            (StatusCode::CONFLICT, "conflict")
        }
        CommandError::Release(error) => match error {
            ReleaseError::InstallInProgress => (StatusCode::CONFLICT, "install_in_progress"),
            ReleaseError::AlreadyCurrent(_) => (StatusCode::CONFLICT, "already_current"),
            ReleaseError::NothingToRollBack { .. } => {
                (StatusCode::CONFLICT, "nothing_to_roll_back")
            }
            ReleaseError::BadStatus { .. } | ReleaseError::InUse { .. } => {
                (StatusCode::CONFLICT, "bad_status")
            }
            ReleaseError::UnknownRelease { .. } => (StatusCode::NOT_FOUND, "unknown_release"),
            ReleaseError::Manifest(_) | ReleaseError::Plan(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "not_installable")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "release_failed"),
        },
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "failed"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        let body = json!({"error": {"kind": kind, "message": self.to_string()}});
        (status, Json(body)).into_response()
    }
}

async fn not_found(request: HttpRequest) -> ApiError {
    ApiError::NotFound(format!("{} {}", request.method(), request.uri().path()))
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}

async fn snapshot(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(shared.snapshot().await)
}

/// A `snapshot` event at once, then every [`EVENT_INTERVAL`] or as soon as a change was
/// made here, until the client goes away; at most [`MAX_EVENT_STREAMS`] at once (the
/// stream holds its permit until it is dropped).
async fn events(
    State(shared): State<Arc<Shared>>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = Arc::clone(&shared.streams)
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyStreams {
            limit: MAX_EVENT_STREAMS,
        })?;
    let changes = shared.changed.subscribe();
    let stream = futures_util::stream::unfold(
        (shared, changes, true, permit),
        |(shared, mut changes, first, permit)| async move {
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(EVENT_INTERVAL) => {}
                    // The sender lives as long as `shared`: this never fails.
                    _ = changes.changed() => {}
                }
            }
            let snapshot = shared.shared_snapshot().await;
            let event = Event::default().event("snapshot").data(&*snapshot);
            Some((Ok(event), (shared, changes, false, permit)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What an actor shows of its state (its `format_status`, else the state) and its last
/// exits; 404 only for a name with neither.
async fn actor(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (progress, _) = tokio::sync::mpsc::unbounded_channel();
    let state = execute(
        &shared.handler,
        Request::State {
            actor: name.clone(),
            replace: None,
            raw: false,
        },
        progress,
    )
    .await;
    let exits = crate::metrics::recent_exits(&name);
    match state {
        Ok(state) => Ok(Json(
            json!({"actor": name, "state": state, "recent_exits": exits}),
        )),
        Err(CommandError::NoActor(_)) if exits.is_empty() => {
            Err(CommandError::NoActor(name).into())
        }
        Err(error) => Ok(Json(json!({
            "actor": name,
            "state_error": error.to_string(),
            "recent_exits": exits,
        }))),
    }
}

fn parse_version(text: &str) -> Result<semver::Version, ApiError> {
    semver::Version::parse(text).map_err(|source| ApiError::BadVersion {
        text: text.to_owned(),
        source,
    })
}

async fn install(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(version): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_mutation(&headers, &shared.token)?;
    let version = parse_version(&version)?;
    mutate(
        shared,
        format!("install {version}"),
        Request::Install {
            version,
            permanent: false,
        },
    )
    .await
}

async fn rollback(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    check_mutation(&headers, &shared.token)?;
    mutate(shared, "rollback".to_owned(), Request::Rollback {}).await
}

async fn make_permanent(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(version): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_mutation(&headers, &shared.token)?;
    let version = parse_version(&version)?;
    mutate(
        shared,
        format!("make-permanent {version}"),
        Request::MakePermanent { version },
    )
    .await
}

/// Runs a control command in a task of its own (a client that goes away does not cancel
/// it), its progress recorded for the page.
async fn mutate(
    shared: Arc<Shared>,
    operation: String,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let task = tokio::spawn(async move {
        tracing::info!(%operation, "observer: running a request from the page");
        shared.begin(operation);
        let (progress, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let run = execute(&shared.handler, request, progress);
        tokio::pin!(run);
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                Some(line) = lines.recv() => shared.progress(line),
            }
        };
        while let Ok(line) = lines.try_recv() {
            shared.progress(line);
        }
        shared.finish(&outcome);
        outcome
    });
    let outcome = task.await.map_err(ApiError::Task)?;
    Ok(Json(outcome?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_get_the_status_that_says_what_kind() {
        let version = semver::Version::new(1, 0, 0);
        for (error, status) in [
            (CommandError::NoActor("x".to_owned()), StatusCode::NOT_FOUND),
            (
                CommandError::Release(ReleaseError::AlreadyCurrent(version.clone())),
                StatusCode::CONFLICT,
            ),
            (
                CommandError::Release(ReleaseError::InstallInProgress),
                StatusCode::CONFLICT,
            ),
            (
                CommandError::Release(ReleaseError::UnknownRelease {
                    version,
                    root: "/r".into(),
                }),
                StatusCode::NOT_FOUND,
            ),
            (
                CommandError::Release(ReleaseError::LoadAbandoned),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ] {
            assert_eq!(command_status(&error).0, status, "{error}");
        }
    }
}
