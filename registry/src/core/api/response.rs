//! The answer to an HTTP request, for the shell to write out.

use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl ApiResponse {
    pub fn json(status: u16, value: &Value) -> Self {
        ApiResponse {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_default(),
            headers: Vec::new(),
        }
    }

    pub fn ok(value: Value) -> Self {
        Self::json(200, &value)
    }

    pub fn empty(status: u16) -> Self {
        ApiResponse { status, content_type: "text/plain", body: Vec::new(), headers: Vec::new() }
    }

    pub fn text(status: u16, text: impl Into<String>) -> Self {
        ApiResponse {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.into().into_bytes(),
            headers: Vec::new(),
        }
    }

    /// An unknown agent or task: a 200 with an error body, as the original
    /// answered (compatible).
    pub fn not_found_body() -> Self {
        Self::ok(json!({"error": "not found"}))
    }
}
