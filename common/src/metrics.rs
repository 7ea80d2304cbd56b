//! The Prometheus page every service answers `GET /metrics` with, from its own registry.

use prometheus::{Registry, TextEncoder};

/// The text exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Every metric of `registry`, in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    TextEncoder::new()
        .encode_utf8(&registry.gather(), &mut out)
        .expect("text encoding to memory");
    out
}

/// `GET /metrics`'s answer for `registry`.
pub fn response(registry: &Registry) -> poem::Response {
    poem::Response::builder()
        .content_type(CONTENT_TYPE)
        .body(render(registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("backless_test_total", "A test counter").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc_by(3);
        let text = render(&registry);
        assert!(
            text.contains("# TYPE backless_test_total counter"),
            "{text}"
        );
        assert!(text.contains("backless_test_total 3"), "{text}");
        let resp = response(&registry);
        assert_eq!(resp.content_type(), Some(CONTENT_TYPE));
    }
}
