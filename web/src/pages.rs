//! The browser pages: plain HTML, CSS and JS embedded in the binary, no inline script, no CDN.

use poem::endpoint::{EmbeddedFileEndpoint, EmbeddedFilesEndpoint};
use poem::http::header;
use poem::middleware::SetHeader;
use poem::{EndpointExt, Route};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "static"]
pub struct Assets;

const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
                   frame-ancestors 'none'; form-action 'self'";

/// Add `/` (the app) and `/static/*` to `route`.
pub fn mount(route: Route) -> Route {
    let headers = || {
        SetHeader::new()
            .overriding(header::CONTENT_SECURITY_POLICY, CSP)
            .overriding("X-Content-Type-Options", "nosniff")
            .overriding(header::REFERRER_POLICY, "no-referrer")
    };
    route
        .at(
            "/",
            EmbeddedFileEndpoint::<Assets>::new("index.html").with(headers()),
        )
        .nest(
            "/static",
            EmbeddedFilesEndpoint::<Assets>::new().with(headers()),
        )
}
