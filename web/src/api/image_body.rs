//! An image response whose content type is known only at run time.

use bytes::Bytes;
use poem::http::header;
use poem::{IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::registry::{
    MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry,
};

/// Image bytes with their sniffed or produced content type; never cached by shared caches.
pub struct ImageBody {
    pub data: Bytes,
    pub content_type: String,
    /// Offer as a download under this name.
    pub filename: Option<String>,
}

impl IntoResponse for ImageBody {
    fn into_response(self) -> Response {
        let r = Response::builder()
            .content_type(self.content_type)
            .header(header::CACHE_CONTROL, "private, no-store")
            .header("X-Content-Type-Options", "nosniff");
        // Always a disposition: the browser never renders a download as a page of its own.
        let mut disposition = "inline".to_string();
        if let Some(name) = self.filename {
            let safe: String = name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            disposition = format!("inline; filename=\"{safe}\"");
        }
        r.header(header::CONTENT_DISPOSITION, disposition)
            .body(self.data)
    }
}

impl ApiResponse for ImageBody {
    fn meta() -> MetaResponses {
        MetaResponses {
            responses: vec![MetaResponse {
                description: "The image (PNG, JPEG, WebP, GIF, BMP or TIFF).",
                status: Some(200),
                status_range: None,
                content: vec![MetaMediaType {
                    content_type: "image/*",
                    schema: MetaSchemaRef::Inline(Box::new(MetaSchema::new_with_format(
                        "string", "binary",
                    ))),
                }],
                headers: vec![],
            }],
        }
    }

    fn register(_registry: &mut Registry) {}
}
