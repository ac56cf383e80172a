//! Steps 4 and 5: the org-scoped agent cache. Reads of `/{agents2|agents}/{id}` are served from
//! moka, concurrent misses share one upstream fetch, and invalidations drop every variant.
//!
//! Correctness rests on per-agent *generations*: every invalidation bumps the generation of the
//! agent's stripe before removing its entries. A fill remembers the generation it started under and
//! stores its answer tagged with it; lookups only serve variants whose tag is still current, and
//! in-flight fills are coalesced per (variant, generation). So a fill that began before a write is
//! never served after it, and a read that arrives after a write never joins an older fill.
//!
//! `key` names what is cached, `store` keeps it, `coalesce` is the lock that lets one miss of many
//! go upstream, `fill` fetches and stores through it, and `policy` decides what may be kept and
//! how an answer says where it came from.

mod coalesce;
mod fill;
mod invalidate;
mod key;
mod policy;
mod store;
#[cfg(test)]
mod tests;

pub use fill::FillOutcome;
pub use key::{fold_case, Scope, SharedVersion};
pub use policy::{client_directive, CacheOutcome, CacheStatus, ClientDirective, Fwd};
pub use store::{AgentCache, Fresh, Lookup, Stored, Ticket};
