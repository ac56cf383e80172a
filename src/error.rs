//! Every answer the gateway makes itself: one error type, mapped to a status, an audit decision and
//! DialNexa's own error shape (`statusCode`, `message`, `error`) plus `code` and `request_id`.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;
use std::time::Duration;

use crate::http::{self as body, ProxyBody};

/// Why the gateway refused or failed a request. Upstream's own error answers never become one of
/// these: they pass through untouched.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    BadPath(&'static str),
    #[error("no such route: {0} is not a DialNexa API version this gateway serves")]
    UnknownVersion(String),
    #[error("a valid team key is required (Authorization: Bearer <key> or X-Api-Key)")]
    Unauthenticated,
    #[error("this team key ended at {} (its not_after) and is no longer accepted; use another of the team's keys", humantime::format_rfc3339_seconds(*.ended))]
    KeyExpired { ended: std::time::SystemTime },
    #[error("team is read-only: only GET and HEAD are allowed")]
    ReadOnly,
    #[error("rate limit exceeded for team")]
    RateLimited { retry_after: Duration },
    #[error("the organisation's DialNexa budget has no room for this team's call right now")]
    OrgQuotaExhausted {
        retry_after: Duration,
        /// The org's budget, for its `RateLimit` headers.
        per_minute: u32,
        burst: u32,
        /// Until the org's budget is full again.
        reset: Duration,
    },
    #[error("DialNexa asked this organisation to wait; nothing is sent upstream until then")]
    UpstreamQuotaExhausted { retry_after: Duration },
    #[error("request body exceeds the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request body could not be read")]
    BodyUnreadable,
    #[error("the client sent no part of its request body for {0:?}")]
    BodyTimeout(Duration),
    #[error("the client did not send a complete request head in time")]
    HeaderTimeout,
    #[error("method {0} is not allowed; allowed methods are listed in the Allow header")]
    MethodNotAllowed(String),
    #[error("the cluster's shared state (Redis) is unavailable; try again shortly")]
    ClusterUnavailable,
    #[error("upstream unreachable")]
    UpstreamUnreachable,
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("upstream gave an answer the gateway cannot pass on: {0}")]
    UpstreamInvalid(&'static str),
    #[error("admin token required")]
    AdminUnauthenticated,
    #[error("admin API is disabled (no admin.token_sha256 configured)")]
    AdminDisabled,
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    InvalidAdminRequest(String),
}

/// What an audit line records about how the request was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Unauthenticated,
    Forbidden,
    RateLimited,
    BadRequest,
}

impl Decision {
    /// The audit line's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::RateLimited => "rate_limited",
            Self::BadRequest => "bad_request",
        }
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadPath(_) | Self::BodyUnreadable | Self::InvalidAdminRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::UnknownVersion(_) | Self::NotFound | Self::AdminDisabled => StatusCode::NOT_FOUND,
            Self::BodyTimeout(_) | Self::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthenticated | Self::KeyExpired { .. } | Self::AdminUnauthenticated => {
                StatusCode::UNAUTHORIZED
            }
            Self::ReadOnly => StatusCode::FORBIDDEN,
            Self::RateLimited { .. }
            | Self::OrgQuotaExhausted { .. }
            | Self::UpstreamQuotaExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UpstreamUnreachable | Self::UpstreamInvalid(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::ClusterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable machine-readable code, for clients that branch on the reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadPath(_) => "bad_path",
            Self::UnknownVersion(_) => "unknown_api_version",
            Self::Unauthenticated => "invalid_team_key",
            Self::KeyExpired { .. } => "key_expired",
            Self::ReadOnly => "read_only_team",
            Self::RateLimited { .. } => "rate_limited",
            Self::OrgQuotaExhausted { .. } => "org_quota_exhausted",
            Self::UpstreamQuotaExhausted { .. } => "upstream_quota_exhausted",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyUnreadable => "body_unreadable",
            Self::BodyTimeout(_) | Self::HeaderTimeout => "request_timeout",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::ClusterUnavailable => "cluster_unavailable",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::UpstreamInvalid(_) => "upstream_invalid_response",
            Self::AdminUnauthenticated => "invalid_admin_token",
            Self::AdminDisabled => "admin_disabled",
            Self::NotFound => "not_found",
            Self::InvalidAdminRequest(_) => "invalid_request",
        }
    }

    pub fn decision(&self) -> Decision {
        match self {
            Self::Unauthenticated | Self::KeyExpired { .. } | Self::AdminUnauthenticated => {
                Decision::Unauthenticated
            }
            Self::ReadOnly => Decision::Forbidden,
            Self::RateLimited { .. }
            | Self::OrgQuotaExhausted { .. }
            | Self::UpstreamQuotaExhausted { .. } => Decision::RateLimited,
            Self::BadPath(_)
            | Self::UnknownVersion(_)
            | Self::BodyTooLarge { .. }
            | Self::BodyUnreadable
            | Self::BodyTimeout(_)
            | Self::HeaderTimeout
            | Self::MethodNotAllowed(_)
            | Self::NotFound
            | Self::AdminDisabled
            | Self::InvalidAdminRequest(_) => Decision::BadRequest,
            // The request was allowed; forwarding it failed.
            Self::UpstreamUnreachable
            | Self::UpstreamTimeout(_)
            | Self::UpstreamInvalid(_)
            | Self::ClusterUnavailable => Decision::Allowed,
        }
    }

    /// The body of the gateway's own answer: DialNexa's error shape plus `code` and `request_id`.
    pub fn body_json(&self, request_id: &str) -> Vec<u8> {
        let status = self.status();
        let body = ErrorBody {
            status_code: status.as_u16(),
            message: self.to_string(),
            error: status.canonical_reason().unwrap_or("Error"),
            code: self.code(),
            request_id,
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The gateway's own answer, in DialNexa's error shape.
    pub fn to_response(&self, request_id: &str) -> Response<ProxyBody> {
        let status = self.status();
        let bytes = self.body_json(request_id);
        let mut resp = Response::new(body::full(Bytes::from(bytes)));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match self {
            Self::Unauthenticated | Self::KeyExpired { .. } | Self::AdminUnauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::MethodNotAllowed(_) => {
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static(crate::auth::ALLOWED_METHODS),
                );
            }
            // A replica reconnects within seconds; a client may try again soon, not at once.
            Self::ClusterUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Self::RateLimited { retry_after } | Self::UpstreamQuotaExhausted { retry_after } => {
                headers.insert(
                    header::RETRY_AFTER,
                    crate::http::header_number(whole_seconds(*retry_after)),
                );
            }
            Self::OrgQuotaExhausted {
                retry_after,
                per_minute,
                burst,
                reset,
            } => {
                headers.insert(
                    header::RETRY_AFTER,
                    crate::http::header_number(whole_seconds(*retry_after)),
                );
                // Zero when the org's budget is full (it lends nothing beyond the parts it keeps).
                let reset = if reset.is_zero() {
                    0
                } else {
                    whole_seconds(*reset)
                };
                org_policy_headers(headers, *per_minute, *burst, reset);
            }
            _ => {}
        }
        resp
    }
}

/// The quota headers of an answer the org's budget refused, naming the policy `"org"`: nothing
/// left for this team right now, and the org's budget full again in `reset` seconds.
fn org_policy_headers(headers: &mut http::HeaderMap, per_minute: u32, burst: u32, reset: u64) {
    let mut policy = crate::http::HeaderText::with_capacity(32);
    policy
        .push("\"org\";q=")
        .push_u64(per_minute.into())
        .push(";w=60");
    let mut current = crate::http::HeaderText::with_capacity(32);
    current.push("\"org\";r=0;t=").push_u64(reset);
    headers.insert("ratelimit-limit", HeaderValue::from(burst));
    headers.insert("ratelimit-remaining", HeaderValue::from_static("0"));
    headers.insert("ratelimit-reset", crate::http::header_number(reset));
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", current)] {
        if let Some(value) = value.finish() {
            headers.insert(name, value);
        }
    }
}

/// Seconds for `Retry-After`-style headers: rounded up, never below one, so a client that waits
/// exactly that long is not refused again.
pub fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "statusCode")]
    status_code: u16,
    message: String,
    error: &'static str,
    code: &'static str,
    request_id: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one() {
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
    }

    #[tokio::test]
    async fn error_body_has_dialnexa_shape_plus_code_and_request_id() {
        let resp = GatewayError::RateLimited {
            retry_after: Duration::from_millis(2100),
        }
        .to_response("req-1");
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "3");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["statusCode"], 429);
        assert_eq!(v["error"], "Too Many Requests");
        assert_eq!(v["code"], "rate_limited");
        assert_eq!(v["request_id"], "req-1");
        assert!(v["message"].is_string());
    }

    #[test]
    fn upstream_failures_are_audited_as_allowed() {
        assert_eq!(
            GatewayError::UpstreamUnreachable.decision(),
            Decision::Allowed
        );
        assert_eq!(
            GatewayError::BodyTooLarge { limit: 1 }.decision(),
            Decision::BadRequest
        );
    }
}
