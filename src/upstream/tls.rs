//! TLS to upstream: rustls with ring, the Mozilla roots built in and the system's store beside them.

use std::sync::Arc;

/// The CAs an upstream certificate may chain to: the Mozilla roots built in, so the binary works in
/// a bare container, and the system's store (`/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR` as
/// OpenSSL reads them), so a private CA installed the usual way is trusted too. Read again whenever
/// the upstream client is rebuilt (a reload that changes `connect_timeout_ms`).
fn trusted_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::warn!(error = %e, "could not read the system's CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(added, ignored, "system CA certificates");
    roots
}

/// The client TLS config: safe defaults, the roots above, no client certificate.
pub(super) fn client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        // ring with the default protocol versions is always a valid provider.
        .expect("ring provider supports the default TLS versions")
        .with_root_certificates(trusted_roots())
        .with_no_client_auth()
}
