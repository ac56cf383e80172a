//! Upstream over TLS: the certificate is checked against the system's CA store (here given by
//! `SSL_CERT_FILE`, as OpenSSL reads it) beside the built-in roots, and the gateway speaks HTTP/2
//! or HTTP/1.1 as ALPN decides. The CA and certificates are made up for each test.

use std::time::Duration;

use http::{Method, Version};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::support::*;

/// A made-up CA and a server configuration with a `localhost` certificate it signed.
struct Pki {
    ca_pem: String,
    server: rustls::ServerConfig,
}

fn pki(alpn: &[&[u8]]) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "dialnexa-gateway test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .unwrap();
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Pki {
        ca_pem: ca.pem(),
        server,
    }
}

/// The real binary in front of `upstream`, trusting the CA in `ca_pem` through `SSL_CERT_FILE`.
async fn gateway_trusting(
    upstream: &FakeUpstream,
    ca_pem: &str,
) -> (BinaryGateway, tempfile::NamedTempFile) {
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca_pem).unwrap();
    let gw = GatewayBuilder::new(upstream.https_base_url())
        .binary_env("SSL_CERT_FILE", ca_file.path().to_str().unwrap())
        .spawn_binary()
        .await;
    (gw, ca_file)
}

#[tokio::test]
async fn a_tls_upstream_signed_by_a_system_ca_is_reached_over_http2() {
    let pki = pki(&[b"h2", b"http/1.1"]);
    let upstream = FakeUpstream::start_tls(pki.server).await;
    let (gw, _ca) = gateway_trusting(&upstream, &pki.ca_pem).await;
    let c = gw.client();

    let miss = c.get("/v1/agents2/t1", BILLING).await;
    assert_eq!(miss.status, 200);
    assert_eq!(miss.json()["id"], "t1");
    assert_eq!(miss.x_cache(), "MISS");
    let hit = c.get("/v1/agents2/t1", BILLING).await;
    assert_eq!((hit.status, hit.x_cache()), (200, "HIT"));
    let forwarded = c.get("/v1/calls", BILLING).await;
    assert_eq!(forwarded.status, 200);

    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for r in &seen {
        assert_eq!(r.version, Version::HTTP_2, "ALPN offered h2");
        assert_eq!(r.headers["authorization"], bearer(ORG_KEY_ACME));
    }
}

#[tokio::test]
async fn an_upstream_that_offers_only_http1_is_spoken_to_in_http1() {
    let pki = pki(&[b"http/1.1"]);
    let upstream = FakeUpstream::start_tls(pki.server).await;
    let (gw, _ca) = gateway_trusting(&upstream, &pki.ca_pem).await;
    let r = gw.client().get("/v1/agents2/t2", BILLING).await;
    assert_eq!(r.status, 200);
    assert_eq!(upstream.count(&Method::GET, "/v1/agents2/t2"), 1);
    assert_eq!(upstream.requests()[0].version, Version::HTTP_11);
}

#[tokio::test]
async fn an_upstream_certificate_no_trusted_ca_signed_is_502_and_sends_nothing() {
    let pki = pki(&[b"h2", b"http/1.1"]);
    let upstream = FakeUpstream::start_tls(pki.server).await;
    // The system store holds another made-up CA, not the one that signed upstream's certificate.
    let (gw, _ca) = gateway_trusting(&upstream, &self::pki(&[]).ca_pem).await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        gw.client().get("/v1/agents2/t3", BILLING),
    )
    .await
    .expect("answered");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["code"], "upstream_unreachable");
    assert_eq!(upstream.total(), 0);
}
