//! The web dashboard (SPEC §6), served by the API from files compiled into
//! the binary: plain HTML and JavaScript in `dashboards/web/`, no build
//! step and nothing fetched from elsewhere at run time.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../../dashboards/web/index.html");
const SCRIPT: &str = include_str!("../../dashboards/web/app.js");

/// The page.
pub async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
}

/// Its script.
pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}
