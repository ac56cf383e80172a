//! Integration tests: the real server on loopback in front of a real fake upstream, asserting on
//! what crosses the wire. One binary, so it links once.
//!
//! Where each part of the product contract (`DESIGN.md`) is checked:
//!
//! | DESIGN.md | modules |
//! |---|---|
//! | refusal order, DialNexa-shaped errors | `forwarding`, `audit` |
//! | 1. identify the team (Bearer, `X-Api-Key`, `401` + `WWW-Authenticate`) | `forwarding` |
//! | 2. authorize (`read_only` teams) | `forwarding`, `cache::invalidation` |
//! | 3. rate-limit (GCRA, write quota, `429`, `RateLimit-*`) | `ratelimit`, `cache::hits` |
//! | 4. serve from cache, else forward with the org key | `cache::hits`, `cache::coalescing`, `cache::stored`, `forwarding` |
//! | 5. invalidate (both times, whatever upstream answered) | `cache::invalidation`, `cache::write_race` |
//! | 6. audit, one line per request | `audit` |
//! | legacy unversioned paths, `/v2` is `404` | `forwarding`, `cache::invalidation` |
//! | cache rules: keys and org scoping, one agent however its id is spelt | `cache::hits`, `cache::invalidation`, `cluster` |
//! | cache rules: a fill older than an invalidation is not stored | `cache::write_race`, `cache::purge`, `cache::stale` |
//! | cache rules: coalescing | `cache::coalescing` |
//! | cache rules: what is stored, identity fills, no `304` | `cache::stored`, `forwarding` |
//! | cache rules: client `no-cache` / `no-store` | `cache::directives` |
//! | cache rules: `X-Cache`, `Age`, `Cache-Status` | `cache::hits`, `cache::stale` |
//! | cache rules: stale-if-error | `cache::stale` |
//! | cache rules: per-request headers, nothing private shared | `cache::hits`, `edges` (cache fills) |
//! | cache rules under sustained load (ignored; `SOAK_SECONDS`) | `soak` |
//! | forwarding rules: headers, request id, unsafe paths, `413`, `502`/`504`, pass-through | `forwarding` |
//! | forwarding rules: TLS and ALPN to upstream | `tls` |
//! | forwarding rules: methods, re-framing, HTTP/2 cookies | `edges` |
//! | limits on slow, idle and too many clients | `edges`, `sim` (the simulator holds the same ones) |
//! | audit line: fields, `changed_fields`, secrets, backpressure, shutdown | `audit`, `operations::secrets`, `operations::signals` |
//! | audit line: `invalidated`, `499` for clients gone | `cache::invalidation`, `cache::coalescing`, `forwarding` |
//! | config: validation (`check`), bounds, secret files, env overrides | `operations::subcommands` |
//! | config: `SIGHUP` reloads, key files re-read | `operations::reload`, `ratelimit` (quota state) |
//! | config changes without a signal: watched files, ConfigMap swaps, the fingerprint | `operations::watch` |
//! | the life of a team key: `not_after`, `key_expired`, last use, `check`'s warning | `operations::key_life`, `operations::subcommands`, `observability` |
//! | CLI: run, `check`, `hash-key`, `gen-key`, exit codes | `operations::subcommands`, `operations::signals` |
//! | CLI: `demo`, `sim` | `sim` |
//! | the simulated DialNexa | `sim` |
//! | admin listener: probes, `/metrics` | `operations::admin_listener`, `cache::metrics`, `ratelimit` |
//! | admin listener: `/admin/cache/purge` | `cache::purge`, `audit`, `edges` |
//! | the organisation's DialNexa quota: only upstream calls spend it, parts, lending, refusals, STALE, holds (also across replicas), reloads | `budget` |
//! | cluster mode (quotas, read-after-write, purges, Redis unavailable) | `cluster` (a real `redis-server`; `support::redis`) |
//! | tracing: spans, context, sampling, a dead collector; audit `trace_id` | `traces` (an OTLP collector; `support::otlp`), `audit` |
//! | cluster mode: a hostile team and a sick Redis (bounded state, error replies, stalls) | `cluster::hostile` |
//! | cluster mode: Redis restarts and failover (closed connections, Sentinel, `min_replicas_acked`) | `cluster::failover` |
//!
//! `support` holds the fixtures: the fake upstream, the gateway under test with its typed config,
//! a client (with the one `bearer()`, `x_cache()` and `version()`), a raw HTTP/1.1 connection, the
//! one `/metrics` reader, the one `wait_until` (no test sleeps in place of an event it can wait
//! for), Redis servers and Sentinels for cluster mode, and an OTLP collector.

mod support;

mod audit;
mod budget;
mod cache;
mod cluster;
mod edges;
mod forwarding;
mod observability;
mod operations;
mod ratelimit;
mod sim;
mod soak;
mod tls;
mod traces;
