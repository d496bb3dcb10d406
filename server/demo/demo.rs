//! `/demo`: a live demo page (pick a project and channel, see events arrive, publish from a
//! form with a pasted API key) built on the browser client `@herald/client`.
//!
//! * `GET /demo` (and `/demo/`): the page, embedded in the binary (`server/demo/index.html`).
//! * `GET /demo/pkg/{file}`: the built npm package, read at request time from
//!   `$HERALD_DEMO_PKG_DIR`, else the `sdk-wasm/pkg` directory of the source tree this binary was
//!   built from (`sdk-wasm/build.sh` makes it). It is not embedded, so the server builds without
//!   the WebAssembly toolchain; when it is missing the page says how to build it, and these
//!   requests answer `404 not_found` with the same hint.

use std::path::PathBuf;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use herald_protocol::{ErrorBody, ErrorCode};

const PAGE: &str = include_str!("index.html");

/// The routes under `/demo` (nested by `app::router`).
pub(crate) fn routes() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/pkg/{file}", get(package_file))
        .fallback(|| async { not_found("no such route".into()) })
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
}

/// Where the built package is.
fn package_dir() -> PathBuf {
    std::env::var_os("HERALD_DEMO_PKG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk-wasm/pkg")))
}

async fn package_file(Path(file): Path<String>) -> Response {
    // The package is flat: one plain file name, no path, no dot files.
    let valid = !file.starts_with('.')
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let content_type = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("ts") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        Some("md") => "text/markdown; charset=utf-8",
        _ => return not_found(format!("no demo package file {file:?}")),
    };
    if !valid {
        return not_found(format!("no demo package file {file:?}"));
    }
    let dir = package_dir();
    match tokio::fs::read(dir.join(&file)).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => not_found(format!(
            "{file} not found in {}: build the browser package with sdk-wasm/build.sh (or set HERALD_DEMO_PKG_DIR)",
            dir.display()
        )),
    }
}

fn not_found(message: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(ErrorBody::new(ErrorCode::NotFound, message)),
    )
        .into_response()
}
