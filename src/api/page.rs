//! The live risk page: `GET /` and `GET /assets/{file}`, four static files embedded in the
//! binary at build time (plain HTML, CSS and JavaScript with inline SVG — no Node toolchain).
//! The page reads the same API as everyone else (`/v1/accounts`, `/v1/feeds`, the event
//! stream, the what-if stress), so it needs nothing the API does not already offer.

use super::*;

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const DETAIL_JS: &str = include_str!("page/detail.js");
const APP_CSS: &str = include_str!("page/app.css");

/// Only our own origin; no inline script, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

fn asset_response(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the page.
pub(super) async fn index() -> Response {
    asset_response("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /assets/{file}`: the page's script and style sheet.
pub(super) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    match file.as_str() {
        "app.js" => Ok(asset_response("text/javascript; charset=utf-8", APP_JS)),
        "detail.js" => Ok(asset_response("text/javascript; charset=utf-8", DETAIL_JS)),
        "app.css" => Ok(asset_response("text/css; charset=utf-8", APP_CSS)),
        _ => Err(ApiError::NotFound(format!(
            "no asset {file:?}; the page has app.js, detail.js and app.css"
        ))),
    }
}
