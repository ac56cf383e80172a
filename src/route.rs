//! Step 0: reject unsafe paths, map `/v1/...` and the legacy unversioned paths to the upstream path,
//! and recognise agent routes (the only cacheable reads and the writes that invalidate).

use std::borrow::Cow;

use crate::error::GatewayError;

/// The two names DialNexa has used for the agent resource. Both address the same agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Agents2,
    Agents,
}

impl Family {
    /// Case-insensitively: DialNexa's router (like Express's default) does not tell `/Agents` from
    /// `/agents`, so a write through either must invalidate the same agent.
    fn parse(segment: &str) -> Option<Self> {
        if segment.eq_ignore_ascii_case("agents2") {
            Some(Self::Agents2)
        } else if segment.eq_ignore_ascii_case("agents") {
            Some(Self::Agents)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPath {
    pub family: Family,
    pub id: String,
    /// True for exactly `/{family}/{id}`: the one shape a GET is cached for.
    pub is_item: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The path after the version prefix, appended to `upstream.base_url`: starts with `/`, or is
    /// empty for the bare `/v1` (which is then `upstream.base_url` itself).
    pub upstream_path: String,
    pub agent: Option<AgentPath>,
}

/// Parses the raw (still percent-encoded) request path.
pub fn parse(raw_path: &str) -> Result<Route, GatewayError> {
    check_safe(raw_path)?;
    let canonical = canonicalize(raw_path)?;
    let upstream_path = strip_version(&canonical)?;
    Ok(Route {
        upstream_path: upstream_path.to_owned(),
        agent: agent_path(upstream_path),
    })
}

/// The path in one canonical spelling (RFC 3986 §6.2.2): percent-encoded unreserved characters
/// decoded, other escapes in upper case, raw non-ASCII bytes (which a URI may not hold) encoded,
/// runs of `/` merged (as NGINX's `merge_slashes` does).
/// This is what is matched, cached under, invalidated and forwarded, so `/agents/ab%63`,
/// `/agents//abc` and `/agents/abc` are one agent for the cache exactly as they are for upstream.
fn canonicalize(path: &str) -> Result<Cow<'_, str>, GatewayError> {
    let bytes = path.as_bytes();
    if path.is_ascii() && !bytes.contains(&b'%') && !path.contains("//") {
        return Ok(Cow::Borrowed(path));
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let escape = |out: &mut Vec<u8>, byte: u8| {
        out.extend_from_slice(&[
            b'%',
            HEX[usize::from(byte >> 4)],
            HEX[usize::from(byte & 0xf)],
        ]);
    };
    let mut out: Vec<u8> = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let decoded = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or(GatewayError::BadPath(
                    "malformed percent-encoding in the path",
                ))?;
            if decoded.is_ascii_alphanumeric() || b"-._~".contains(&decoded) {
                out.push(decoded);
            } else {
                escape(&mut out, decoded);
            }
            i += 3;
            continue;
        }
        if !b.is_ascii() {
            escape(&mut out, b);
        } else if !(b == b'/' && out.last() == Some(&b'/')) {
            out.push(b);
        }
        i += 1;
    }
    // Every byte pushed is ASCII.
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| GatewayError::BadPath("the path is not valid UTF-8"))
}

/// Refuses anything that could walk out of the API prefix or smuggle a separator past an upstream
/// that decodes differently than we do.
fn check_safe(path: &str) -> Result<(), GatewayError> {
    if !path.starts_with('/') {
        return Err(GatewayError::BadPath("path must start with /"));
    }
    let bytes = path.as_bytes();
    if bytes.iter().any(|b| b.is_ascii_control() || *b == b'\\') {
        return Err(GatewayError::BadPath(
            "control characters and backslashes are not allowed in the path",
        ));
    }
    // Most paths have no percent-encoding at all: then there is nothing to decode, and no copy to make.
    let dots: Cow<str> = if bytes.contains(&b'%') {
        let lower = path.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") {
            return Err(GatewayError::BadPath(
                "encoded slashes are not allowed in the path",
            ));
        }
        if lower.contains("%00") || has_encoded_control(&lower) {
            return Err(GatewayError::BadPath(
                "encoded control characters are not allowed in the path",
            ));
        }
        // Decode only the dot so `%2e%2e`, `.%2e` and `%2e.` are caught like a literal `..`.
        Cow::Owned(lower.replace("%2e", "."))
    } else {
        Cow::Borrowed(path)
    };
    if has_dot_segment(dots.as_bytes()) {
        return Err(GatewayError::BadPath(
            "dot segments are not allowed in the path",
        ));
    }
    if dots.contains("..") {
        return Err(GatewayError::BadPath("'..' is not allowed in the path"));
    }
    Ok(())
}

/// Whether a `/`-separated segment is exactly `.` or `..`, in one pass over the bytes (this runs
/// on every request; splitting into segments cost more than the rest of routing).
fn has_dot_segment(path: &[u8]) -> bool {
    let mut segment_start = 0;
    for end in path
        .iter()
        .enumerate()
        .filter_map(|(i, &b)| (b == b'/').then_some(i))
        .chain([path.len()])
    {
        if matches!(&path[segment_start..end], b"." | b"..") {
            return true;
        }
        segment_start = end + 1;
    }
    false
}

/// `%00`-`%1f` and `%7f`.
fn has_encoded_control(lower: &str) -> bool {
    lower.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && ((w[1] == b'0' || w[1] == b'1') && w[2].is_ascii_hexdigit()
                || (w[1] == b'7' && w[2] == b'f'))
    })
}

/// `/v1/x` → `/x`; `/x` (legacy, unversioned) → `/x`; `/v2/x` → the gateway's own 404.
/// `/admin/...` is the gateway's own 404 too: the admin API lives on the admin listener only, and a
/// team key must never reach it, nor send such a path upstream under the org's key.
/// The first segment is matched without regard to case, as upstream's router does.
fn strip_version(path: &str) -> Result<&str, GatewayError> {
    let first = path[1..].split(is_slash).next().unwrap_or("");
    if first.eq_ignore_ascii_case("v1") {
        return Ok(&path[3..]);
    }
    if first.eq_ignore_ascii_case("admin") {
        return Err(GatewayError::NotFound);
    }
    let is_version = first.len() > 1
        && first.starts_with(['v', 'V'])
        && first[1..].bytes().all(|b| b.is_ascii_digit());
    if is_version {
        return Err(GatewayError::UnknownVersion(first.to_owned()));
    }
    Ok(path)
}

/// The segment separator as a `char` predicate rather than a `char` pattern: on paths this short
/// the `memchr`-based searcher a `char` pattern uses costs more to set up than the scan (callgrind).
fn is_slash(c: char) -> bool {
    c == '/'
}

fn agent_path(path: &str) -> Option<AgentPath> {
    let mut segments = path.strip_prefix('/')?.split(is_slash);
    let family = Family::parse(segments.next()?)?;
    let id = segments.next().filter(|s| !s.is_empty())?;
    // `/{family}/{id}` or `/{family}/{id}/`.
    let is_item = match segments.next() {
        None => true,
        Some("") => segments.next().is_none(),
        Some(_) => false,
    };
    Some(AgentPath {
        family,
        id: id.to_owned(),
        is_item,
    })
}

/// Query string in a canonical order so `?a=1&b=2` and `?b=2&a=1` share a cache entry. Sorted by
/// name only, and stably: the order of a repeated name's values can matter to upstream.
pub fn normalize_query(query: Option<&str>) -> String {
    let Some(q) = query else { return String::new() };
    let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_by_key(|pair| pair.split('=').next().unwrap_or(pair));
    pairs.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(path: &str) -> bool {
        matches!(parse(path), Err(GatewayError::BadPath(_)))
    }

    #[test]
    fn versioned_and_legacy_paths_map_to_the_same_upstream_path() {
        assert_eq!(
            parse("/v1/agents2/a1").unwrap().upstream_path,
            "/agents2/a1"
        );
        assert_eq!(parse("/agents2/a1").unwrap().upstream_path, "/agents2/a1");
        assert_eq!(parse("/calls").unwrap().upstream_path, "/calls");
        assert_eq!(parse("/v1").unwrap().upstream_path, "");
        assert_eq!(parse("/v1/").unwrap().upstream_path, "/");
        assert_eq!(parse("/").unwrap().upstream_path, "/");
        assert_eq!(parse("/v1x/y").unwrap().upstream_path, "/v1x/y");
    }

    #[test]
    fn admin_paths_are_not_served_on_the_api_listener() {
        assert!(matches!(
            parse("/admin/cache/purge"),
            Err(GatewayError::NotFound)
        ));
        assert!(matches!(parse("/admin"), Err(GatewayError::NotFound)));
        assert!(parse("/v1/admin/x").is_ok());
        assert!(parse("/administrators").is_ok());
    }

    #[test]
    fn other_versions_are_not_found() {
        assert!(
            matches!(parse("/v2/agents2/a1"), Err(GatewayError::UnknownVersion(v)) if v == "v2")
        );
        assert!(matches!(
            parse("/v10"),
            Err(GatewayError::UnknownVersion(_))
        ));
        assert!(matches!(
            parse("/V2/agents2/a1"),
            Err(GatewayError::UnknownVersion(_))
        ));
        assert_eq!(
            parse("/V1/agents2/a1").unwrap().upstream_path,
            "/agents2/a1"
        );
        assert!(matches!(parse("/Admin/x"), Err(GatewayError::NotFound)));
    }

    #[test]
    fn traversal_encoded_slashes_and_controls_are_bad_paths() {
        for p in [
            "/v1/../admin",
            "/v1/agents2/..",
            "/v1/%2e%2e/x",
            "/v1/%2E%2E/x",
            "/v1/.%2e/x",
            "/v1/agents2/a%2fb",
            "/v1/agents2/a%2Fb",
            "/v1/agents2/a%00",
            "/v1/agents2/a%0a",
            "/v1/agents2/a%7F",
            "/v1/agents2/a\\b",
            "/v1/./agents2",
            "/v1/agents2/.",
            "/v1/agents2/./",
            "/.",
            "/v1/%2e",
        ] {
            assert!(bad(p), "{p} should be refused");
        }
        assert!(!bad("/v1/agents2/a.b"));
        assert!(!bad("/v1/agents2/.a"));
        assert!(!bad("/v1/agents2/a./b"));
        assert!(!bad("/v1/agents2/a%20b"));
    }

    #[test]
    fn agent_items_and_subresources_are_recognised() {
        let item = parse("/v1/agents/abc").unwrap().agent.unwrap();
        assert_eq!(
            (item.family, item.id.as_str(), item.is_item),
            (Family::Agents, "abc", true)
        );
        let sub = parse("/agents2/abc/versions").unwrap().agent.unwrap();
        assert_eq!(
            (sub.family, sub.id.as_str(), sub.is_item),
            (Family::Agents2, "abc", false)
        );
        assert!(parse("/v1/agents2").unwrap().agent.is_none());
        assert!(parse("/v1/agents2/").unwrap().agent.is_none());
        assert!(parse("/v1/calls/abc").unwrap().agent.is_none());
    }

    #[test]
    fn equivalent_spellings_of_a_path_are_one_path() {
        for p in [
            "/v1/agents/ab%63",
            "/v1/agents//abc",
            "//v1/agents/abc",
            "/v1/%61gents/abc",
            "/%761/agents/abc",
        ] {
            let route = parse(p).unwrap();
            assert_eq!(route.upstream_path, "/agents/abc", "{p}");
            assert_eq!(route.agent.unwrap().id, "abc", "{p}");
        }
        // Escapes that must stay escapes keep their meaning, in one case.
        assert_eq!(
            parse("/v1/agents/a%20b%3a").unwrap().upstream_path,
            "/agents/a%20b%3A"
        );
        let upper = parse("/v1/Agents/abc").unwrap().agent.unwrap();
        assert_eq!((upper.family, upper.id.as_str()), (Family::Agents, "abc"));
        assert_eq!(
            parse("/v1/agents/\u{e9}").unwrap().upstream_path,
            parse("/v1/agents/%c3%a9").unwrap().upstream_path
        );
        assert!(bad("/v1/agents/a%zz"));
        assert!(bad("/v1/agents/a%4"));
    }

    #[test]
    fn query_order_does_not_matter() {
        assert_eq!(
            normalize_query(Some("b=2&a=1")),
            normalize_query(Some("a=1&b=2"))
        );
        assert_eq!(normalize_query(Some("")), "");
        assert_eq!(normalize_query(None), "");
        assert_eq!(normalize_query(Some("a=2&b=1&a=1")), "a=2&a=1&b=1");
    }
}
