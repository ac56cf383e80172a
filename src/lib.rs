//! dialnexa-gateway: an authenticating, caching, rate-limiting gateway in front of the DialNexa API.
//!
//! A request's life is in [`proxy`]; the modules are its steps: [`route`] → [`auth`] →
//! [`ratelimit`] → [`cache`] / [`upstream`] → [`audit`]. [`server`] runs the listeners, [`state`]
//! holds the reloadable config snapshot, [`admin`] serves probes, metrics and purges.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod demo;
/// The simulated DialNexa, at its old path (it lives in [`demo::sim`]).
pub use demo::sim;
pub mod error;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod request_id;
pub mod route;
pub mod server;
pub mod settings;
pub mod state;
pub mod telemetry;
pub mod upstream;
