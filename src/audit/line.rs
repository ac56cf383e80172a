//! An audit record as one JSON line, written by hand. serde_json's derived serializer sent each of
//! the record's 20 fields through its generic machinery, formatted the timestamp through
//! `core::fmt`, and escaped every string in small pieces: ~7k instructions per line under
//! callgrind, a sixth of a whole cache hit. This writes the same bytes (the tests compare it with
//! serde_json's output) with a fast path for strings that need no escaping.

use std::io::Write as _;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::audit::AuditRecord;

/// Appends `record` as one JSON object (no newline) to `out`.
pub fn write(record: &AuditRecord, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"ts\":\"");
    timestamp(record.ts, out);
    out.extend_from_slice(b"\",\"request_id\":");
    string(&record.request_id, out);
    out.extend_from_slice(b",\"team\":");
    opt_string(record.team.as_deref(), out);
    out.extend_from_slice(b",\"key_id\":");
    opt_string(record.key_id.as_deref(), out);
    out.extend_from_slice(b",\"org\":");
    opt_string(record.org.as_deref(), out);
    out.extend_from_slice(b",\"client_ip\":\"");
    ip(record.client_ip, out);
    out.extend_from_slice(b"\",\"method\":");
    string(&record.method, out);
    out.extend_from_slice(b",\"path\":");
    string(&record.path, out);
    out.extend_from_slice(b",\"agent_id\":");
    opt_string(record.agent_id.as_deref(), out);
    out.extend_from_slice(b",\"status\":");
    number(record.status.into(), out);
    out.extend_from_slice(b",\"upstream_status\":");
    match record.upstream_status {
        Some(s) => number(s.into(), out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"cache\":");
    opt_string(record.cache.map(|c| c.as_str()), out);
    out.extend_from_slice(b",\"decision\":\"");
    out.extend_from_slice(record.decision.as_str().as_bytes());
    out.extend_from_slice(b"\",\"latency_ms\":");
    float(record.latency_ms, out);
    out.extend_from_slice(b",\"upstream_latency_ms\":");
    match record.upstream_latency_ms {
        Some(ms) => float(ms, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"bytes_in\":");
    number(record.bytes_in, out);
    out.extend_from_slice(b",\"bytes_out\":");
    number(record.bytes_out, out);
    out.extend_from_slice(b",\"limited_by\":");
    opt_string(record.limited_by.map(|l| l.as_str()), out);
    out.extend_from_slice(b",\"trace_id\":\"");
    let mut hex = [0u8; 32];
    // 16 bytes always fit 32 hex digits.
    let _ = hex::encode_to_slice(record.trace_id.to_bytes(), &mut hex);
    out.extend_from_slice(&hex);
    out.extend_from_slice(b"\",\"changed_fields\":");
    match &record.changed_fields {
        Some(fields) => {
            out.push(b'[');
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(field, out);
            }
            out.push(b']');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"invalidated\":");
    number(record.invalidated, out);
    out.push(b'}');
}

fn number(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds as made by [`crate::audit::millis`] (whole microseconds), in the shortest form
/// that reads back as the same `f64`, as serde_json writes it: `12.0`, `0.25`, `3.142`.
fn float(ms: f64, out: &mut Vec<u8>) {
    let micros = (ms * 1000.0).round();
    if !(0.0..1e15).contains(&micros) || micros / 1000.0 != ms {
        // Not a microsecond count: let the standard library find the shortest digits.
        if ms.is_finite() {
            let _ = write!(out, "{ms:?}");
        } else {
            out.extend_from_slice(b"null");
        }
        return;
    }
    let micros = micros as u64;
    number(micros / 1000, out);
    out.push(b'.');
    let frac = micros % 1000;
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let len = if digits[2] != b'0' {
        3
    } else if digits[1] != b'0' {
        2
    } else {
        1
    };
    out.extend_from_slice(&digits[..len]);
}

fn opt_string(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        Some(s) => string(s, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// Bytes a JSON string cannot hold as they are: control characters, `"` and `\\`.
static NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// A JSON string. Audit strings (ids, paths, team names) almost never need escaping, so they are
/// checked first and copied whole.
fn string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    if bytes.iter().any(|&b| NEEDS_ESCAPE[usize::from(b)]) {
        escaped(bytes, out);
    } else {
        out.extend_from_slice(bytes);
    }
    out.push(b'"');
}

/// The escapes serde_json uses: `\"`, `\\`, the short forms for backspace, form feed, newline,
/// carriage return and tab, `\u00XX` for other control characters; all else (DEL and non-ASCII
/// included) as is.
fn escaped(bytes: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NEEDS_ESCAPE[usize::from(b)] {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0x0f)]);
            }
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

fn ip(addr: IpAddr, out: &mut Vec<u8>) {
    match addr {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                number(octet.into(), out);
            }
        }
        // Rare here, and its compressed form has rules of its own: the standard library's.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// RFC 3339 in UTC with milliseconds, `2026-11-26T04:33:32.123Z`, as `humantime` writes it.
fn timestamp(ts: SystemTime, out: &mut Vec<u8>) {
    let since = ts.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    put_digits(&mut buf[0..4], year.clamp(0, 9999) as u64);
    put_digits(&mut buf[5..7], month.into());
    put_digits(&mut buf[8..10], day.into());
    put_digits(&mut buf[11..13], of_day / 3600);
    put_digits(&mut buf[14..16], of_day / 60 % 60);
    put_digits(&mut buf[17..19], of_day % 60);
    put_digits(&mut buf[20..23], since.subsec_millis().into());
    out.extend_from_slice(&buf);
}

/// `n` as exactly `slot.len()` zero-padded digits.
fn put_digits(slot: &mut [u8], mut n: u64) {
    for digit in slot.iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::admission::LimitedBy;
    use crate::audit::millis;
    use crate::cache::CacheOutcome;
    use crate::error::Decision;

    fn line(record: &AuditRecord) -> String {
        let mut out = Vec::new();
        write(record, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// What serde_json makes of the same record, field by field in the contract's order.
    fn reference(r: &AuditRecord) -> String {
        use serde_json::{json, Value};
        let fields: [(&str, Value); 21] = [
            (
                "ts",
                json!(humantime::format_rfc3339_millis(r.ts).to_string()),
            ),
            ("request_id", json!(r.request_id)),
            ("team", json!(r.team.as_deref())),
            ("key_id", json!(r.key_id)),
            ("org", json!(r.org.as_deref())),
            ("client_ip", json!(r.client_ip)),
            ("method", json!(r.method)),
            ("path", json!(r.path)),
            ("agent_id", json!(r.agent_id)),
            ("status", json!(r.status)),
            ("upstream_status", json!(r.upstream_status)),
            ("cache", json!(r.cache.map(CacheOutcome::as_str))),
            ("decision", json!(r.decision.as_str())),
            ("latency_ms", json!(r.latency_ms)),
            ("upstream_latency_ms", json!(r.upstream_latency_ms)),
            ("bytes_in", json!(r.bytes_in)),
            ("bytes_out", json!(r.bytes_out)),
            ("limited_by", json!(r.limited_by.map(LimitedBy::as_str))),
            ("trace_id", json!(r.trace_id.to_string())),
            ("changed_fields", json!(r.changed_fields)),
            ("invalidated", json!(r.invalidated)),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    fn full_record() -> AuditRecord {
        let mut r = AuditRecord::new(
            "0123456789abcdef0123456789abcdef".into(),
            "10.1.2.3".parse().unwrap(),
            &http::Method::PATCH,
            "/v1/agents2/ag-1?x=\"q\"\\\u{7f}é",
        );
        r.team = Some(Arc::from("voice-ops \"blue\"\n"));
        r.key_id = Some("a1b2c3d4".into());
        r.org = Some(Arc::from("acme\t\u{1}\u{1f}"));
        r.agent_id = Some("ag-1".into());
        r.status = 200;
        r.upstream_status = Some(201);
        r.cache = Some(CacheOutcome::Stale);
        r.decision = Decision::RateLimited;
        r.latency_ms = millis(Duration::from_micros(12_340));
        r.upstream_latency_ms = Some(millis(Duration::from_micros(7)));
        r.bytes_in = 42;
        r.bytes_out = u64::MAX;
        r.limited_by = Some(LimitedBy::TeamWrite);
        r.changed_fields = Some(vec!["llm.model".into(), "na\"me".into()]);
        r.invalidated = 3;
        r
    }

    /// The same line through serde_json's derived serializer: what the hand-written writer must
    /// beat to be kept. Measured with callgrind (see docs/benchmarks.md, "The audit line"):
    /// `AUDIT_LINE_WRITER=serde|hand valgrind --tool=callgrind <test binary> --ignored
    /// an_audit_line_costs_fewer_instructions_by_hand --exact`.
    #[derive(serde::Serialize)]
    struct Derived<'a> {
        ts: String,
        request_id: &'a str,
        team: Option<&'a str>,
        key_id: Option<&'a str>,
        org: Option<&'a str>,
        client_ip: std::net::IpAddr,
        method: &'a str,
        path: &'a str,
        agent_id: Option<&'a str>,
        status: u16,
        upstream_status: Option<u16>,
        cache: Option<&'a str>,
        decision: &'a str,
        latency_ms: f64,
        upstream_latency_ms: Option<f64>,
        bytes_in: u64,
        bytes_out: u64,
        limited_by: Option<&'a str>,
        trace_id: String,
        changed_fields: Option<&'a [String]>,
        invalidated: u64,
    }

    fn derived(r: &AuditRecord, out: &mut Vec<u8>) {
        let line = Derived {
            ts: humantime::format_rfc3339_millis(r.ts).to_string(),
            request_id: &r.request_id,
            team: r.team.as_deref(),
            key_id: r.key_id.as_deref(),
            org: r.org.as_deref(),
            client_ip: r.client_ip,
            method: &r.method,
            path: &r.path,
            agent_id: r.agent_id.as_deref(),
            status: r.status,
            upstream_status: r.upstream_status,
            cache: r.cache.map(CacheOutcome::as_str),
            decision: r.decision.as_str(),
            latency_ms: r.latency_ms,
            upstream_latency_ms: r.upstream_latency_ms,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            limited_by: r.limited_by.map(LimitedBy::as_str),
            trace_id: r.trace_id.to_string(),
            changed_fields: r.changed_fields.as_deref(),
            invalidated: r.invalidated,
        };
        let _ = serde_json::to_writer(&mut *out, &line);
    }

    #[test]
    fn the_derived_serializer_writes_the_same_line() {
        let mut r = full_record();
        r.latency_ms = 12.5;
        let (mut hand, mut serde) = (Vec::new(), Vec::new());
        write(&r, &mut hand);
        derived(&r, &mut serde);
        assert_eq!(
            String::from_utf8(hand).unwrap(),
            String::from_utf8(serde).unwrap()
        );
    }

    #[test]
    #[ignore = "a measurement, run under callgrind; see `Derived`"]
    fn an_audit_line_costs_fewer_instructions_by_hand() {
        let mut r = full_record();
        r.team = Some(Arc::from("billing"));
        r.org = Some(Arc::from("acme"));
        r.path = "/v1/agents2/agt_abc123".into();
        let by_hand = std::env::var("AUDIT_LINE_WRITER").as_deref() != Ok("serde");
        let mut out = Vec::with_capacity(1024);
        let mut total = 0;
        for _ in 0..100_000 {
            out.clear();
            if by_hand {
                write(&r, &mut out);
            } else {
                derived(&r, &mut out);
            }
            total += out.len();
        }
        println!("{} bytes written", std::hint::black_box(total));
    }

    #[test]
    fn writes_the_same_bytes_as_serde_json() {
        let full = full_record();
        assert_eq!(line(&full), reference(&full));
        let empty = AuditRecord::new(
            String::new(),
            "::1".parse().unwrap(),
            &http::Method::from_bytes(b"PURGE").unwrap(),
            "",
        );
        assert_eq!(line(&empty), reference(&empty));
        let mut no_fields = full;
        no_fields.changed_fields = Some(Vec::new());
        no_fields.client_ip = "2001:db8::8:800:200c:417a".parse().unwrap();
        assert_eq!(line(&no_fields), reference(&no_fields));
    }

    #[test]
    fn latencies_print_as_serde_json_prints_them() {
        let mut r = full_record();
        for micros in [
            0u64, 1, 10, 100, 999, 1_000, 1_001, 1_010, 1_100, 123_456, 59_999_999,
        ] {
            r.latency_ms = millis(Duration::from_micros(micros));
            assert_eq!(line(&r), reference(&r), "{micros} µs");
        }
        for odd in [0.1 + 0.2, 1e-9, 2.5e20] {
            r.latency_ms = odd;
            let v: serde_json::Value = serde_json::from_str(&line(&r)).unwrap();
            assert_eq!(v["latency_ms"].as_f64(), Some(odd));
        }
    }

    #[test]
    fn timestamps_match_humantime() {
        let mut r = full_record();
        let mut secs: u64 = 0;
        // Every few days across leap years, centuries and 2000, at odd times of day.
        while secs < 4_102_444_800 + 86_400 * 400 {
            r.ts = UNIX_EPOCH + Duration::from_millis(secs * 1000 + secs % 1000);
            assert_eq!(line(&r), reference(&r));
            secs += 86_400 * 3 + 3_607;
        }
        r.ts = UNIX_EPOCH + Duration::from_millis(951_782_400_999); // 2000-02-29T00:00:00.999Z
        assert!(line(&r).starts_with("{\"ts\":\"2000-02-29T00:00:00.999Z\""));
    }

    #[test]
    fn record_serializes_every_contract_field() {
        let r = AuditRecord::new(
            "rid".into(),
            "127.0.0.1".parse().unwrap(),
            &http::Method::GET,
            "/v1/x",
        );
        let mut line = Vec::new();
        write(&r, &mut line);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        for field in [
            "ts",
            "request_id",
            "team",
            "key_id",
            "org",
            "client_ip",
            "method",
            "path",
            "agent_id",
            "status",
            "upstream_status",
            "cache",
            "decision",
            "latency_ms",
            "upstream_latency_ms",
            "bytes_in",
            "bytes_out",
            "limited_by",
            "trace_id",
            "changed_fields",
            "invalidated",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["decision"], "allowed");
        assert!(v.get("started").is_none());
    }

    mod props {
        use proptest::prelude::*;
        use std::net::IpAddr;

        use super::*;

        /// Text of any kind: quotes, backslashes, control characters, non-ASCII.
        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[\"\\\\\u{0}-\u{1f}\u{7f}a\u{e9}\u{2028}\u{fffd}😀]{0,12}",
            ]
        }

        fn outcome() -> impl Strategy<Value = CacheOutcome> {
            prop::sample::select(vec![
                CacheOutcome::Hit,
                CacheOutcome::Miss,
                CacheOutcome::Bypass,
                CacheOutcome::Stale,
            ])
        }

        fn decision() -> impl Strategy<Value = Decision> {
            prop::sample::select(vec![
                Decision::Allowed,
                Decision::Unauthenticated,
                Decision::Forbidden,
                Decision::RateLimited,
                Decision::BadRequest,
            ])
        }

        /// Latencies as `millis` makes them: whole microseconds, up to a few years.
        fn micros_latency() -> impl Strategy<Value = f64> {
            prop_oneof![0u64..10_000_000, 0u64..100_000_000_000_000,]
                .prop_map(|us| millis(Duration::from_micros(us)))
        }

        /// Any `f64` at all, NaN and infinities included.
        fn any_latency() -> impl Strategy<Value = f64> {
            prop_oneof![
                micros_latency(),
                any::<f64>(),
                prop::sample::select(vec![
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    -0.0,
                    -1.5,
                    1e15,
                    1e16,
                    f64::MAX,
                    f64::MIN_POSITIVE,
                    5e-324,
                ]),
            ]
        }

        fn record(latency: BoxedStrategy<f64>) -> impl Strategy<Value = AuditRecord> {
            let strings = (
                text(),
                prop::option::of(text()),
                prop::option::of(text()),
                prop::option::of(text()),
                text(),
                text(),
                prop::option::of(text()),
                prop::option::of(prop::collection::vec(text(), 0..4)),
            );
            let numbers = (
                // Up to the year 9999: the timestamp has four digits for the year.
                0u64..253_402_300_799_999,
                any::<IpAddr>(),
                any::<u16>(),
                prop::option::of(any::<u16>()),
                prop::option::of(outcome()),
                decision(),
                latency.clone(),
                prop::option::of(latency),
                (any::<u64>(), any::<u64>(), any::<u64>()),
                prop::option::of(prop::sample::select(vec![
                    LimitedBy::Team,
                    LimitedBy::TeamWrite,
                    LimitedBy::Org,
                    LimitedBy::Upstream,
                ])),
            );
            (strings, numbers).prop_map(
                |(
                    (request_id, team, key_id, org, method, path, agent_id, changed_fields),
                    (
                        ts,
                        ip,
                        status,
                        upstream_status,
                        cache,
                        decision,
                        lat,
                        up_lat,
                        (bi, bo, inv),
                        limited_by,
                    ),
                )| {
                    let mut r = AuditRecord::new(request_id, ip, &http::Method::GET, &path);
                    r.ts = UNIX_EPOCH + Duration::from_millis(ts);
                    r.team = team.map(Arc::from);
                    r.key_id = key_id;
                    r.org = org.map(Arc::from);
                    r.method = method.into();
                    r.agent_id = agent_id;
                    r.status = status;
                    r.upstream_status = upstream_status;
                    r.cache = cache;
                    r.decision = decision;
                    r.latency_ms = lat;
                    r.upstream_latency_ms = up_lat;
                    r.bytes_in = bi;
                    r.bytes_out = bo;
                    r.limited_by = limited_by;
                    r.changed_fields = changed_fields;
                    r.invalidated = inv;
                    r
                },
            )
        }

        /// The number text of a field as written: `,"name":` occurs only between fields, since a
        /// quote inside a string is escaped.
        fn raw_number<'a>(line: &'a str, name: &str) -> &'a str {
            let start = line.find(&format!(",\"{name}\":")).unwrap() + name.len() + 4;
            let len = line[start..].find([',', '}']).unwrap();
            &line[start..start + len]
        }

        /// A latency as written: the same `f64` read back exactly (serde_json's own reader may be
        /// a bit off for long mantissas), or `null` for one JSON cannot hold.
        fn assert_latency(line: &str, name: &str, ms: f64) -> Result<(), TestCaseError> {
            let raw = raw_number(line, name);
            if ms.is_finite() {
                prop_assert_eq!(raw.parse::<f64>().ok(), Some(ms), "{} = {}", name, raw);
            } else {
                prop_assert_eq!(raw, "null");
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn a_record_is_one_line_of_one_object_with_its_fields(r in record(any_latency().boxed())) {
                let mut out = Vec::new();
                write(&r, &mut out);
                out.push(b'\n');
                prop_assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
                prop_assert!(!out.contains(&b'\r'), "a carriage return in {:?}", String::from_utf8_lossy(&out));
                let v: serde_json::Value = serde_json::from_slice(&out)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out))))?;
                let o = v.as_object().unwrap();
                prop_assert_eq!(o.len(), 21);
                prop_assert_eq!(&o["ts"], &serde_json::json!(humantime::format_rfc3339_millis(r.ts).to_string()));
                prop_assert_eq!(&o["request_id"], &serde_json::json!(r.request_id));
                prop_assert_eq!(&o["team"], &serde_json::json!(r.team.as_deref()));
                prop_assert_eq!(&o["key_id"], &serde_json::json!(r.key_id));
                prop_assert_eq!(&o["org"], &serde_json::json!(r.org.as_deref()));
                prop_assert_eq!(
                    o["client_ip"].as_str().and_then(|ip| ip.parse::<IpAddr>().ok()),
                    Some(r.client_ip)
                );
                prop_assert_eq!(&o["method"], &serde_json::json!(r.method));
                prop_assert_eq!(&o["path"], &serde_json::json!(r.path));
                prop_assert_eq!(&o["agent_id"], &serde_json::json!(r.agent_id));
                prop_assert_eq!(&o["status"], &serde_json::json!(r.status));
                prop_assert_eq!(&o["upstream_status"], &serde_json::json!(r.upstream_status));
                prop_assert_eq!(&o["cache"], &serde_json::json!(r.cache.map(CacheOutcome::as_str)));
                prop_assert_eq!(&o["decision"], &serde_json::json!(r.decision.as_str()));
                let text = std::str::from_utf8(&out).unwrap();
                assert_latency(text, "latency_ms", r.latency_ms)?;
                match r.upstream_latency_ms {
                    Some(ms) => assert_latency(text, "upstream_latency_ms", ms)?,
                    None => prop_assert_eq!(raw_number(text, "upstream_latency_ms"), "null"),
                }
                prop_assert!(o["latency_ms"].is_number() || o["latency_ms"].is_null());
                prop_assert_eq!(&o["bytes_in"], &serde_json::json!(r.bytes_in));
                prop_assert_eq!(&o["bytes_out"], &serde_json::json!(r.bytes_out));
                prop_assert_eq!(&o["limited_by"], &serde_json::json!(r.limited_by.map(LimitedBy::as_str)));
                prop_assert_eq!(&o["trace_id"], &serde_json::json!(r.trace_id.to_string()));
                prop_assert_eq!(&o["changed_fields"], &serde_json::json!(r.changed_fields));
                prop_assert_eq!(&o["invalidated"], &serde_json::json!(r.invalidated));
            }

            #[test]
            fn a_record_is_written_as_serde_json_writes_it(r in record(micros_latency().boxed())) {
                prop_assert_eq!(line(&r), reference(&r));
            }
        }
    }
}
