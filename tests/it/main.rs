//! Integration tests: the real server on loopback in front of a real fake upstream, asserting on
//! what crosses the wire. One binary, so it links once.

#[allow(dead_code, unused_imports)]
mod support;

mod audit;
mod cache;
mod forwarding;
mod observability;
mod operations;
mod ratelimit;
mod soak;
mod tls;
