//! The upstream fetch of a cache fill (step 4): what the one request that goes upstream for a miss
//! does, whichever task it runs in.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use super::context::RequestCtx;
use super::Exchange;

use crate::audit::UpstreamReport;
use crate::error::GatewayError;
use crate::state::{Gateway, Snapshot, TeamState};
use crate::telemetry::{self, TraceId};
use crate::upstream::{CacheFetch, UpstreamRequest};

/// The upstream fetch of a fill: run once however many requests share it, by its leader, perhaps
/// in the background where no span is current.
pub(super) struct Fetch {
    req: UpstreamRequest,
    gw: Arc<Gateway>,
    snapshot: Arc<Snapshot>,
    /// The team whose request leads the fill: it alone spends the org's upstream budget.
    team: Arc<TeamState>,
    max_entry: u64,
    /// The span of the leader's wait, which the fetch's spans belong under.
    parent: tracing::Span,
    trace_id: TraceId,
    /// The leader's audit line, waiting for this report should its client leave.
    report: oneshot::Sender<UpstreamReport>,
}

impl Fetch {
    /// The fetch of `req` for this request's fill; its audit line waits for the fetch's report
    /// from here on, should its client leave.
    pub(super) fn new(
        ex: &mut Exchange<'_>,
        ctx: &RequestCtx,
        req: UpstreamRequest,
        max_entry: u64,
        parent: tracing::Span,
    ) -> Self {
        Self {
            req,
            gw: Arc::clone(ex.gw),
            snapshot: Arc::clone(ex.snapshot),
            team: Arc::clone(&ctx.team),
            max_entry,
            parent,
            trace_id: ex.record().trace_id,
            report: ex.line.awaiting_fill(),
        }
    }

    pub(super) async fn run(mut self) -> Result<CacheFetch, GatewayError> {
        let Fetch { gw, team, .. } = &self;
        // Once per fill, by its leader: the requests waiting on it spend nothing.
        telemetry::in_span!(
            self.parent.clone(),
            gw.admission.before_upstream(&team.part)
        )?;
        let call = self.req.traced(&self.parent, self.trace_id);
        let timeout = self.snapshot.settings.upstream.timeout;
        let sent = Instant::now();
        let fetched = telemetry::in_span!(
            call.clone(),
            self.snapshot
                .upstream
                .fetch_buffered(&self.req, timeout, self.max_entry)
        );
        let took = sent.elapsed();
        // The fetch alone feeds the histogram; each request's audit line has its own wait.
        self.gw
            .metrics
            .upstream_duration
            .observe(took.as_secs_f64());
        let answer = match &fetched {
            Ok(CacheFetch::Buffered(answer)) => Some((answer.status, &answer.headers)),
            Ok(CacheFetch::TooLarge(resp)) => Some((resp.status(), resp.headers())),
            Err(_) => None,
        };
        if let Some((status, headers)) = answer {
            self.gw
                .admission
                .upstream_answered(&self.team.part, status, headers)
                .await;
        }
        let status = answer.map(|(status, _)| status);
        let error = fetched.as_ref().err().map(GatewayError::code);
        telemetry::span::upstream_answered(&call, status, error);
        let status = status.map(|s| s.as_u16());
        let _ = self.report.send(UpstreamReport { status, took });
        fetched
    }
}
