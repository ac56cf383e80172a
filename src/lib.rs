//! dialnexa-gateway: an authenticating, caching, rate-limiting gateway in front of the DialNexa API.
//!
//! This file is the map. A request's whole life is [`proxy`] (its `mod.rs` is the pipeline on one
//! screen); each step is a call into a room of its own, in this order:
//!
//! | step | room | owns |
//! |---|---|---|
//! | 0 | [`route`] | path → route (`/v1` or legacy), agent id, the `400`s for unsafe paths |
//! | 1-2 | [`auth`] | presented key → [`auth::KeyDigest`], [`auth::Access`], the method allow-list |
//! | 3 | [`admission`] | "may this request go now": the [`admission::Admission`] seam, team GCRA, the org budget, quota headers |
//! | 4-5 | [`cache`] | keys, storage, one fetch per miss, invalidation by [`cache::Scope`], `Cache-Status` |
//! | 4 | [`upstream`] | the pooled client, credential swap and header hygiene, streamed bodies |
//! | 6 | [`audit`] | the record, the one owner of each line ([`audit::PendingLine`]), the writer |
//!
//! Around the pipeline: [`server`] accepts connections and holds them to their limits, signals,
//! reloads (on `SIGHUP` or a change to the files [`config`] watches) and drain; [`state`] is the process ([`state::Gateway`], with the one [`state::Gateway::invalidate`])
//! and the reloadable [`state::Snapshot`]; [`admin`] serves probes, metrics and purges; [`config`]
//! turns operators' TOML into [`settings`], the validated types every stage reads. [`error`] maps
//! every refusal to a status, an audit decision and DialNexa's error shape; [`http`] is the one
//! body type and header-value helpers; [`metrics`], [`request_id`]; [`telemetry`] is the log and
//! the OTLP spans each step opens (`[tracing]`). [`demo`] holds `demo` and the simulated DialNexa;
//! [`cli`] is the command line the thin binary runs.

pub mod admin;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod background;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
/// The simulated DialNexa, at its old path (it lives in [`demo::sim`]).
pub use demo::sim;
pub mod error;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod request_id;
pub mod route;
pub mod server;
pub mod settings;
pub mod state;
pub mod telemetry;
pub mod upstream;
