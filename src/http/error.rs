//! The one place where lock errors become HTTP status codes, and the JSON
//! error body every REST failure is sent as.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lockd_core::LockError;
use serde::Serialize;

/// The HTTP status of each error.
///
/// `RenewalLimit` is 409 Conflict: the request is well formed but conflicts
/// with the lease's state, and repeating it cannot succeed. `WaitTimeout` is
/// 409 too (the brief's choice); the body's `code` tells the two apart.
pub fn status_code(err: &LockError) -> StatusCode {
    match err {
        LockError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
        LockError::NotOwner => StatusCode::FORBIDDEN,
        LockError::NotFound => StatusCode::NOT_FOUND,
        LockError::WaitTimeout { .. } | LockError::RenewalLimit { .. } => StatusCode::CONFLICT,
        LockError::LimitReached(_) => StatusCode::TOO_MANY_REQUESTS,
        LockError::Unavailable(_) | LockError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        LockError::Disabled(_) => StatusCode::NOT_IMPLEMENTED,
        LockError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A stable machine-readable name of each error, sent as the body's `code`.
fn error_code(err: &LockError) -> &'static str {
    match err {
        LockError::InvalidArgument { .. } => "invalid_argument",
        LockError::NotOwner => "not_owner",
        LockError::NotFound => "not_found",
        LockError::WaitTimeout { .. } => "wait_timeout",
        LockError::RenewalLimit { .. } => "renewal_limit",
        LockError::LimitReached(_) => "limit_reached",
        LockError::Unavailable(_) => "unavailable",
        LockError::ShuttingDown => "shutting_down",
        LockError::Disabled(_) => "disabled",
        LockError::Internal(_) => "internal",
    }
}

/// The JSON name of a field that the core names after the proto.
pub fn json_field(field: &str) -> &str {
    match field {
        "client_id" => "clientId",
        "lock_id" => "lockId",
        "ttl_ms" => "ttl",
        "wait_timeout_ms" => "waitTimeout",
        "max_renewals" => "maxRenewals",
        "mode" => "type",
        other => other,
    }
}

/// A failed REST call: `{"success": false, "error": "...", "code": "..."}`,
/// plus `field` for an invalid one.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    success: bool,
    error: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// A field of the request is invalid; `field` is its JSON name.
    pub fn invalid(field: &str, reason: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            message: format!("invalid {field}: {reason}"),
            field: Some(field.to_owned()),
        }
    }

    /// A request that could not be read at all (bad JSON, bad query string).
    fn malformed(status: StatusCode, message: String) -> ApiError {
        ApiError {
            status,
            code: "invalid_argument",
            message,
            field: None,
        }
    }

    pub fn no_route(status: StatusCode, message: String) -> ApiError {
        ApiError {
            status,
            code: if status == StatusCode::NOT_FOUND {
                "no_route"
            } else {
                "method_not_allowed"
            },
            message,
            field: None,
        }
    }
}

impl From<LockError> for ApiError {
    fn from(err: LockError) -> ApiError {
        match err {
            LockError::InvalidArgument { field, reason } => {
                ApiError::invalid(json_field(field), reason)
            }
            other => ApiError {
                status: status_code(&other),
                code: error_code(&other),
                message: other.to_string(),
                field: None,
            },
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        // A body without a JSON content type keeps axum's 415; everything
        // else the client sent wrong (syntax, types, missing body) is a 400.
        let status = match rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        let text = rejection.body_text();
        if let JsonRejection::JsonDataError(_) = rejection
            && let Some((field, detail)) = unknown_field(&text)
        {
            return ApiError {
                status,
                code: "invalid_argument",
                message: detail.to_owned(),
                field: Some(field.to_owned()),
            };
        }
        ApiError::malformed(status, text)
    }
}

/// The field of serde's `unknown field `name`, expected ...` error, and the
/// message from there on. serde names the field only in its message; the
/// format is pinned by a test below.
fn unknown_field(text: &str) -> Option<(&str, &str)> {
    const MARK: &str = "unknown field `";
    let start = text.find(MARK)?;
    let detail = &text[start..];
    let name = &detail[MARK.len()..];
    let name = &name[..name.find('`')?];
    Some((name, detail))
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::malformed(StatusCode::BAD_REQUEST, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::malformed(StatusCode::BAD_REQUEST, rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            success: false,
            error: &self.message,
            code: self.code,
            field: self.field.as_deref(),
        };
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        ttl: Option<u64>,
    }

    #[test]
    fn serde_names_the_unknown_field_as_expected() {
        let err = serde_json::from_str::<Body>(r#"{"ttl_ms": 5}"#).unwrap_err();
        let text = err.to_string();
        let (field, detail) = unknown_field(&text).expect("recognised");
        assert_eq!(field, "ttl_ms");
        assert!(detail.contains("expected `ttl`"), "{detail}");
    }
}
