//! The observer page: plain HTML, CSS and JavaScript compiled into the binary
//! (`include_str!`), served with their content types. No build step, no external resource
//! (no CDN, no web font): it works offline, and the content security policy (see
//! `routes`) allows nothing else.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("observer.html");
const SCRIPT: &str = include_str!("observer.js");
const STYLE: &str = include_str!("observer.css");

/// `GET /`.
pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

/// `GET /observer.js`.
pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

/// `GET /observer.css`.
pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}
