//! An image response whose content type is known only at run time.

use backless_common::storage::ObjectStream;
use futures::TryStreamExt;
use poem::http::header;
use poem::{Body, IntoResponse, Response};
use poem_openapi::ApiResponse;
use poem_openapi::registry::{
    MetaMediaType, MetaResponse, MetaResponses, MetaSchema, MetaSchemaRef, Registry,
};

/// `Content-Disposition` offering `name` for download, reduced to characters safe in a header.
pub fn content_disposition(name: &str) -> String {
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
    format!("inline; filename=\"{safe}\"")
}

/// An image with its sniffed or produced content type, streamed from storage as the client reads
/// it; never cached by shared caches.
pub struct ImageBody {
    pub object: ObjectStream,
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
        let disposition = match self.filename {
            Some(name) => content_disposition(&name),
            None => "inline".to_string(),
        };
        let body = self
            .object
            .body
            .map_err(|e| std::io::Error::other(e.to_string()));
        r.header(header::CONTENT_DISPOSITION, disposition)
            .header(header::CONTENT_LENGTH, self.object.size)
            .body(Body::from_bytes_stream(body))
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

/// A result: the bytes through web, or a redirect to a signed URL of the object in the store.
pub enum ResultBody {
    Image(ImageBody),
    /// 303 to a short-lived signed URL (`BACKLESS_RESULT_DELIVERY=redirect`).
    Redirect(String),
}

impl IntoResponse for ResultBody {
    fn into_response(self) -> Response {
        match self {
            Self::Image(i) => i.into_response(),
            Self::Redirect(url) => Response::builder()
                .status(poem::http::StatusCode::SEE_OTHER)
                .header(header::LOCATION, url)
                .header(header::CACHE_CONTROL, "private, no-store")
                .finish(),
        }
    }
}

impl ApiResponse for ResultBody {
    fn meta() -> MetaResponses {
        let mut meta = ImageBody::meta();
        meta.responses.push(MetaResponse {
            description: "Redirect to a short-lived signed URL of the image in object storage \
                          (when BACKLESS_RESULT_DELIVERY=redirect).",
            status: Some(303),
            status_range: None,
            content: vec![],
            headers: vec![],
        });
        meta
    }

    fn register(_registry: &mut Registry) {}
}
