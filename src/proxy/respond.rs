//! The last step: the answer's per-request headers (request id, quota, how the cache took part),
//! the request metric, the server span's account of the request, and the hand-off of the audit
//! line to the answer's body.

use http::{HeaderValue, Method, Response};

use super::Exchange;
use crate::admission;
use crate::audit::AuditedBody;
use crate::http::{self as body, ProxyBody};
use crate::request_id::X_REQUEST_ID;
use crate::telemetry::{Answered, RequestTrace};

impl Exchange<'_> {
    /// Adds the per-request headers, records the request, and attaches the audit line to the body.
    pub(super) fn respond(
        mut self,
        mut resp: Response<ProxyBody>,
        method: &Method,
        trace: &RequestTrace,
    ) -> Response<AuditedBody> {
        body::drop_for_head(method, &mut resp);
        let headers = resp.headers_mut();
        // Moved, not cloned: the exchange ends here.
        let request_id = std::mem::replace(&mut self.request_id, HeaderValue::from_static(""));
        headers.insert(X_REQUEST_ID.clone(), request_id);
        if let Some(verdict) = &self.verdict {
            admission::apply_headers(verdict, headers);
        }
        if let Some(cache) = self.cache {
            cache.render(headers);
        }
        let record = self.record();
        trace.answered(
            resp.status(),
            Answered {
                team: record.team.as_deref(),
                org: record.org.as_deref(),
                cache: record.cache.map(|c| c.as_str()),
                decision: record.decision.as_str(),
                limited_by: record.limited_by.map(|l| l.as_str()),
            },
        );
        let status = resp.status().as_u16();
        match &self.get_ok {
            Some(get_ok) if *method == Method::GET && status == 200 => {
                get_ok.inc();
            }
            _ => {
                let team = self.record().team.clone();
                self.gw.metrics.request(team.as_ref(), method, status);
            }
        };
        let line = self.line;
        resp.map(|b| line.attach(status, b))
    }
}
