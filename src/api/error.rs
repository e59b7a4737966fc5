//! [`ApiError`]: every failure of the API as a status code and a JSON body that says what to
//! fix.

use super::*;

/// Every way a request can fail, each mapped to a status and a JSON body
/// `{"error":{"code":"…","message":"…","field":"…","details":[…]}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request itself is malformed (bad JSON, JSON number for money, bad query).
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// Serde path of the offending field, when known.
        field: Option<String>,
        /// For a person.
        message: String,
    },
    /// 401: missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 403: mutations are disabled because no token is configured.
    #[error("account mutations are disabled: no API token is configured")]
    MutationsDisabled,
    /// 404: no such account or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: body over the limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 415: body is not JSON.
    #[error("send the body as JSON with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// 422: well-formed but invalid (unknown instrument, id mismatch, rule broken).
    #[error("{message}")]
    Unprocessable {
        /// Machine-readable code of the first problem.
        code: &'static str,
        /// Serde path of the first offending field.
        field: Option<String>,
        /// For a person (the first problem; `details` lists all).
        message: String,
        /// Every problem found.
        details: Vec<FieldError>,
    },
    /// 409: the update id was already used for a different update.
    #[error("{0}")]
    Conflict(String),
    /// 503: the daemon cannot serve this now (not stored, shutting down, no metrics recorder).
    #[error("{0}")]
    Unavailable(String),
    /// 503: the account exists but cannot be valued now (an instrument it holds has no price,
    /// or a figure overflowed).
    #[error("{0}")]
    AccountIncomplete(String),
    /// 500: an unexpected backend failure.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MutationsDisabled => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unavailable(_) | ApiError::AccountIncomplete(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::Unprocessable { code, .. } => code,
            ApiError::Unauthorized => "unauthorized",
            ApiError::MutationsDisabled => "mutations_disabled",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::Conflict(_) => "update_id_conflict",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::AccountIncomplete(_) => "account_incomplete",
            ApiError::Internal(_) => "internal",
        }
    }

    /// True when the client may retry the same request later.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ApiError::Unavailable(_) | ApiError::AccountIncomplete(_) | ApiError::Internal(_)
        )
    }

    pub(super) fn invalid(details: Vec<FieldError>) -> ApiError {
        let first = details.first();
        ApiError::Unprocessable {
            code: if details.iter().any(|d| d.code == "unknown_instrument") {
                "unknown_instrument"
            } else {
                "invalid_value"
            },
            field: first.map(|d| d.field.clone()),
            message: details
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            details,
        }
    }
}

/// The JSON error body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: String,
    /// For a person.
    pub message: String,
    /// Serde path of the offending field, when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every validation problem (422 only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldErrorBody>,
}

/// One validation problem in [`ErrorDetail::details`].
#[derive(Debug, Serialize, Deserialize)]
pub struct FieldErrorBody {
    /// Code.
    pub code: String,
    /// Serde path.
    pub field: String,
    /// For a person.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (field, details) = match &self {
            ApiError::BadRequest { field, .. } => (field.clone(), Vec::new()),
            ApiError::Unprocessable { field, details, .. } => (
                field.clone(),
                details
                    .iter()
                    .map(|d| FieldErrorBody {
                        code: d.code.to_string(),
                        field: d.field.clone(),
                        message: d.message.clone(),
                    })
                    .collect(),
            ),
            _ => (None, Vec::new()),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
                field,
                details,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        match self {
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::NotFound(id) => ApiError::NotFound(format!("account {id} not found")),
            ApplyError::Invalid { field, message } => ApiError::invalid(vec![FieldError {
                code: "invalid_value",
                field,
                message,
            }]),
            ApplyError::Unavailable(reason) => ApiError::Unavailable(reason),
            ApplyError::Persist(reason) => {
                ApiError::Unavailable(format!("the update was not stored: {reason}; retry"))
            }
            e @ ApplyError::Conflict { .. } => ApiError::Conflict(e.to_string()),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        ApiError::Internal(e.0)
    }
}
