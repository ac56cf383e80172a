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
    /// The id segment fully percent-decoded: `a%3Ab` and `a:b`, `%7B%7D` and `{}` name one
    /// agent upstream, so they are one agent for the cache and its invalidation too. (The path
    /// sent upstream keeps the spelling the request used.)
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

impl Route {
    /// The route as a template, for span names and `http.route`: ids are `{id}`, and what lies
    /// below an agent or past a non-agent route's first segment is `*`, so a template never
    /// carries an id and the names stay few. `/v1/agents2/{id}`, `/v1/agents/{id}/*`, `/v1/calls/*`.
    pub fn template(&self) -> Cow<'static, str> {
        if let Some(agent) = &self.agent {
            let item = match agent.family {
                Family::Agents2 => "/v1/agents2/{id}",
                Family::Agents => "/v1/agents/{id}",
            };
            return if agent.is_item {
                Cow::Borrowed(item)
            } else {
                Cow::Owned(format!("{item}/*"))
            };
        }
        let mut segments = self.upstream_path.split(is_slash).skip(1);
        let first = segments.next().unwrap_or_default();
        // A name, not an id: short, lowercase, no digits-only segment.
        let named = !first.is_empty()
            && first.len() <= 32
            && !first.bytes().all(|b| b.is_ascii_digit())
            && first
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        let deeper = segments.any(|s| !s.is_empty());
        match (named, deeper) {
            (false, _) if first.is_empty() => Cow::Borrowed("/v1"),
            (false, _) => Cow::Borrowed("/v1/*"),
            (true, false) => Cow::Owned(format!("/v1/{first}")),
            (true, true) => Cow::Owned(format!("/v1/{first}/*")),
        }
    }
}

/// Parses the raw (still percent-encoded) request path.
pub fn parse(raw_path: &str) -> Result<Route, GatewayError> {
    check_safe(raw_path)?;
    let canonical = canonicalize(raw_path)?;
    let upstream_path = strip_version(&canonical)?;
    Ok(Route {
        upstream_path: upstream_path.to_owned(),
        agent: agent_path(upstream_path)?,
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
                // Two hex digits, exactly: `from_str_radix` alone would also take `+A` as 0x0A.
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
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

fn agent_path(path: &str) -> Result<Option<AgentPath>, GatewayError> {
    let Some(mut segments) = path.strip_prefix('/').map(|p| p.split(is_slash)) else {
        return Ok(None);
    };
    let Some(family) = segments.next().and_then(Family::parse) else {
        return Ok(None);
    };
    let Some(id) = segments.next().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    // `/{family}/{id}` or `/{family}/{id}/`.
    let is_item = match segments.next() {
        None => true,
        Some("") => segments.next().is_none(),
        Some(_) => false,
    };
    // Encoded slashes and controls were refused before, so the id holds neither. Bytes that are
    // no text could not be told apart from a literal `%XX` in a decoded id; no agent has them.
    let id = percent_encoding::percent_decode_str(id)
        .decode_utf8()
        .map_err(|_| GatewayError::BadPath("the agent id is not UTF-8 once percent-decoded"))?;
    Ok(Some(AgentPath {
        family,
        id: id.into_owned(),
        is_item,
    }))
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

    #[test]
    fn templates_name_routes_without_ids() {
        let t = |p: &str| parse(p).unwrap().template().into_owned();
        assert_eq!(t("/v1/agents2/ag_123"), "/v1/agents2/{id}");
        assert_eq!(t("/agents/ag_123/"), "/v1/agents/{id}");
        assert_eq!(t("/v1/Agents2/ag_123/versions/3"), "/v1/agents2/{id}/*");
        assert_eq!(t("/v1/calls"), "/v1/calls");
        assert_eq!(t("/calls/c_9f8e"), "/v1/calls/*");
        assert_eq!(t("/v1/12345"), "/v1/*");
        assert_eq!(t("/v1/Weird%20Name"), "/v1/*");
        assert_eq!(t("/v1"), "/v1");
    }

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
        // The agent they name is the decoded id, however its reserved characters were spelt.
        for p in [
            "/v1/agents/a%20b%3a",
            "/v1/agents/a%20b:",
            "/agents/a b%3A/versions",
        ] {
            assert_eq!(parse(p).unwrap().agent.unwrap().id, "a b:", "{p}");
        }
        for p in ["/v1/agents2/%7B%7D", "/v1/agents2/{}", "/v1/agents2/%7b}"] {
            assert_eq!(parse(p).unwrap().agent.unwrap().id, "{}", "{p}");
        }
        assert_eq!(parse("/v1/agents/a%25").unwrap().agent.unwrap().id, "a%");
        assert_eq!(
            parse("/v1/agents/%c3%a9").unwrap().agent.unwrap().id,
            "\u{e9}"
        );
        // Bytes that are no text name no agent; elsewhere they are forwarded as they were.
        assert!(bad("/v1/agents/a%ff"));
        assert!(bad("/v1/agents2/%c3/versions"));
        assert_eq!(
            parse("/v1/calls/a%ff").unwrap().upstream_path,
            "/calls/a%FF"
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

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    /// One piece of a path segment: the spellings the path checks are about, and plain text.
    fn atom(escape: BoxedStrategy<String>) -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z0-9_~-]{1,6}",
            2 => prop::sample::select(vec![
                "agents", "agents2", "Agents", "AGENTS2", "v1", "V1", "v2", "v10", "calls", "admin",
            ])
            .prop_map(str::to_owned),
            2 => prop::sample::select(vec![
                ".", "..", "%2e", "%2E", ".%2e", "%2e.", "%2e%2e", "%2E%2E", "a..b", "a.",
            ])
            .prop_map(str::to_owned),
            2 => prop::sample::select(vec![
                "%2f", "%2F", "%5c", "%5C", "%00", "%0a", "%0D", "%1f", "%7f", "%7F", "%20", "%41",
                "%7e", "%c3%a9", "%25", "%252f", "%zz", "%4", "%", "%%",
            ])
            .prop_map(str::to_owned),
            2 => escape,
            1 => prop::sample::select(vec!["\0", "\t", "\n", "\r", "\u{7f}", "\\", "?", "#", " "])
                .prop_map(str::to_owned),
            1 => prop::sample::select(vec!["é", "日本", "\u{85}", "\u{200b}", "\u{feff}", "😀"])
                .prop_map(str::to_owned),
        ]
    }

    /// A raw request path: an optional version prefix, segments of atoms (empty ones make `//`),
    /// sometimes a trailing slash.
    fn raw_path(escape: BoxedStrategy<String>) -> impl Strategy<Value = String> {
        let segment = prop_oneof![
            6 => prop::collection::vec(atom(escape), 1..4).prop_map(|a| a.concat()),
            1 => Just(String::new()),
        ];
        (
            prop::sample::select(vec!["", "/v1", "/V1", "//v1", "/%761"]),
            prop::collection::vec(segment, 0..6),
            any::<bool>(),
        )
            .prop_map(|(prefix, segments, trailing)| {
                let mut path = prefix.to_owned();
                for s in segments {
                    path.push('/');
                    path.push_str(&s);
                }
                if trailing || path.is_empty() {
                    path.push('/');
                }
                path
            })
    }

    /// Any `%` followed by two characters, hex or not, signs included.
    fn any_escape() -> BoxedStrategy<String> {
        "%[0-9a-fA-F+ g-]{2}".boxed()
    }

    /// `%` and two hex digits.
    fn hex_escape() -> BoxedStrategy<String> {
        "%[0-9a-fA-F]{2}".boxed()
    }

    fn percent_decode(path: &str) -> Vec<u8> {
        let bytes = path.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit())) {
                Some(h) if bytes[i] == b'%' => {
                    out.push(u8::from_str_radix(h, 16).unwrap());
                    i += 3;
                }
                _ => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        out
    }

    /// What the contract refuses (`..`, encoded slashes, NUL and control characters) is absent
    /// from what is forwarded, read the way an upstream decodes it.
    fn assert_safe(raw: &str, route: &Route) -> Result<(), TestCaseError> {
        let up = &route.upstream_path;
        prop_assert!(up.is_empty() || up.starts_with('/'), "{raw:?} → {up:?}");
        prop_assert!(up.is_ascii(), "{raw:?} → {up:?} is not ASCII");
        let lower = up.to_ascii_lowercase();
        prop_assert!(
            !lower.contains("%2f") && !lower.contains("%5c"),
            "{raw:?} → {up:?} holds an encoded slash"
        );
        let decoded = percent_decode(up);
        prop_assert!(
            !decoded.iter().any(|b| b.is_ascii_control() || *b == b'\\'),
            "{raw:?} → {up:?} decodes to a control character or backslash"
        );
        prop_assert!(
            !decoded.windows(2).any(|w| w == b".."),
            "{raw:?} → {up:?} decodes to `..`"
        );
        prop_assert!(
            !decoded.split(|b| *b == b'/').any(|s| s == b"."),
            "{raw:?} → {up:?} decodes to a `.` segment"
        );
        Ok(())
    }

    /// The canonical spelling: escapes are `%XX` in upper case and never of an unreserved character,
    /// no `//`.
    fn assert_canonical(raw: &str, route: &Route) -> Result<(), TestCaseError> {
        let up = route.upstream_path.as_bytes();
        prop_assert!(!route.upstream_path.contains("//"), "{raw:?} → {up:?}");
        for (i, _) in up.iter().enumerate().filter(|(_, b)| **b == b'%') {
            let hex = up.get(i + 1..i + 3);
            prop_assert!(
                hex.is_some_and(|h| h
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))),
                "{raw:?} → {:?}: escape not in upper-case hex",
                route.upstream_path
            );
            let byte = u8::from_str_radix(std::str::from_utf8(hex.unwrap()).unwrap(), 16).unwrap();
            prop_assert!(
                !(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)),
                "{raw:?} → {:?}: an unreserved character left escaped",
                route.upstream_path
            );
        }
        Ok(())
    }

    /// The agent a route names is the one its forwarded path names: the cache key (family, id) and
    /// what upstream is asked for are one thing.
    fn assert_agent_matches_path(raw: &str, route: &Route) -> Result<(), TestCaseError> {
        let up = &route.upstream_path;
        let mut segments = up.strip_prefix('/').unwrap_or("").split('/');
        let family = segments.next().and_then(Family::parse);
        let id = segments.next().filter(|s| !s.is_empty());
        let rest: Vec<&str> = segments.collect();
        match (&route.agent, family, id) {
            (Some(agent), Some(family), Some(id)) => {
                prop_assert_eq!(agent.family, family, "{:?}", raw);
                let decoded = percent_decode(id);
                prop_assert_eq!(agent.id.as_bytes(), decoded.as_slice(), "{:?}", raw);
                prop_assert!(!agent.id.contains('/'));
                prop_assert_eq!(
                    agent.is_item,
                    rest.is_empty() || rest == [""],
                    "{:?} → {:?}",
                    raw,
                    up
                );
            }
            (None, None, _) | (None, Some(_), None) => {}
            (agent, _, _) => {
                prop_assert!(false, "{raw:?} → {up:?} named agent {agent:?}");
            }
        }
        Ok(())
    }

    /// Parsing what is forwarded, under the version prefix, gives the same route back.
    fn assert_reparses_to_itself(raw: &str, route: &Route) -> Result<(), TestCaseError> {
        let again = parse(&format!("/v1{}", route.upstream_path));
        prop_assert!(
            again.as_ref().is_ok_and(|r| r == route),
            "{raw:?} → {route:?}, re-parsed {again:?}"
        );
        Ok(())
    }

    /// A path of plain segments, and a second spelling of it: unreserved characters
    /// percent-encoded (either hex case), slashes doubled, the version prefix escaped.
    fn path_and_respelling() -> impl Strategy<Value = (String, String)> {
        let segment = prop_oneof![
            Just("agents".to_owned()),
            Just("agents2".to_owned()),
            "[a-zA-Z0-9_~-]{1,8}",
            "[a-z]{1,3}(%20|%3A|%C3%A9|é)[a-z]{0,3}",
        ];
        (
            prop::collection::vec(segment, 1..5),
            prop::collection::vec(any::<u8>(), 64),
        )
            .prop_map(|(segments, coins)| {
                let path = format!("/v1/{}", segments.join("/"));
                let mut coins = coins.into_iter().cycle();
                let mut respelt = String::new();
                let mut chars = path.chars().peekable();
                while let Some(c) = chars.next() {
                    let coin = coins.next().unwrap_or(0);
                    if c == '%' {
                        // An escape stays an escape, in either case.
                        let hex: String = [chars.next().unwrap(), chars.next().unwrap()]
                            .into_iter()
                            .collect();
                        respelt.push('%');
                        if coin % 2 == 0 {
                            respelt.push_str(&hex.to_ascii_lowercase());
                        } else {
                            respelt.push_str(&hex);
                        }
                    } else if c == '/' {
                        respelt.push_str(if coin % 3 == 0 { "//" } else { "/" });
                    } else if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                        match coin % 4 {
                            0 => respelt.push_str(&format!("%{:02x}", c as u32)),
                            1 => respelt.push_str(&format!("%{:02X}", c as u32)),
                            _ => respelt.push(c),
                        }
                    } else {
                        respelt.push(c);
                    }
                }
                (path, respelt)
            })
    }

    /// An agent id of reserved and other characters (no `/`, no `..`, no controls), and a second
    /// spelling of it with any of its bytes percent-encoded, in either hex case.
    fn id_and_respelling() -> impl Strategy<Value = (String, String)> {
        (
            "[a-z0-9_:@!$&'()*+,;=\\[\\]{}|^` \u{e9}\u{65e5}-]{1,12}",
            prop::collection::vec(any::<u8>(), 48),
        )
            .prop_filter("a dot segment or `..`", |(id, _)| !id.contains(".."))
            .prop_map(|(id, coins)| {
                let mut respelt = String::new();
                for (byte, coin) in id.bytes().zip(coins.into_iter().cycle()) {
                    match coin % 3 {
                        0 => respelt.push_str(&format!("%{byte:02x}")),
                        1 => respelt.push_str(&format!("%{byte:02X}")),
                        // Only bytes that are whole characters on their own go unescaped.
                        _ if byte.is_ascii() => respelt.push(char::from(byte)),
                        _ => respelt.push_str(&format!("%{byte:02X}")),
                    }
                }
                (id, respelt)
            })
    }

    /// `?` pairs with names from a small set so that names repeat, and empty pairs among them.
    fn query_pairs() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(
            prop_oneof![
                4 => ("[abc]{0,2}", prop::option::of("[a-z0-9=%]{0,3}")).prop_map(|(n, v)| match v {
                    Some(v) => format!("{n}={v}"),
                    None => n,
                }),
                1 => Just(String::new()),
            ],
            0..8,
        )
    }

    fn name(pair: &str) -> &str {
        pair.split('=').next().unwrap_or(pair)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn accepted_paths_are_safe_once_decoded(raw in raw_path(any_escape())) {
            if let Ok(route) = parse(&raw) {
                assert_safe(&raw, &route)?;
            }
        }

        #[test]
        fn accepted_paths_with_hex_escapes_are_safe_once_decoded(raw in raw_path(hex_escape())) {
            if let Ok(route) = parse(&raw) {
                assert_safe(&raw, &route)?;
            }
        }

        #[test]
        fn any_text_is_refused_or_safe(raw in "/\\PC{0,40}") {
            if let Ok(route) = parse(&raw) {
                assert_safe(&raw, &route)?;
                assert_canonical(&raw, &route)?;
            }
        }

        #[test]
        fn the_forwarded_path_is_canonical(raw in raw_path(hex_escape())) {
            if let Ok(route) = parse(&raw) {
                assert_canonical(&raw, &route)?;
            }
        }

        #[test]
        fn the_forwarded_path_reparses_to_the_same_route(raw in raw_path(hex_escape())) {
            if let Ok(route) = parse(&raw) {
                assert_reparses_to_itself(&raw, &route)?;
            }
        }

        #[test]
        fn the_agent_named_is_the_one_forwarded(raw in raw_path(hex_escape())) {
            if let Ok(route) = parse(&raw) {
                assert_agent_matches_path(&raw, &route)?;
            }
        }

        #[test]
        fn every_spelling_of_a_path_is_one_route((path, respelt) in path_and_respelling()) {
            let route = parse(&path);
            prop_assert!(route.is_ok(), "{:?}: {:?}", path, route);
            let again = parse(&respelt);
            prop_assert_eq!(route.ok(), again.ok(), "{:?} and {:?}", path, respelt);
        }

        #[test]
        fn every_spelling_of_an_agent_id_is_one_agent((id, respelt) in id_and_respelling()) {
            for family in ["agents", "agents2"] {
                let plain = parse(&format!("/v1/{family}/{id}"));
                let other = parse(&format!("/{family}/{respelt}/versions"));
                prop_assert!(plain.is_ok() && other.is_ok(), "{id:?} or {respelt:?} refused");
                let (plain, other) = (plain.unwrap(), other.unwrap());
                prop_assert_eq!(&plain.agent.as_ref().unwrap().id, &id);
                prop_assert_eq!(&other.agent.as_ref().unwrap().id, &id, "{:?}", respelt);
            }
        }

        #[test]
        fn normalized_query_is_a_fixed_point(pairs in query_pairs()) {
            let once = normalize_query(Some(&pairs.join("&")));
            prop_assert_eq!(normalize_query(Some(&once)), once.clone());
        }

        #[test]
        fn normalized_query_keeps_every_pair_sorted_by_name(pairs in query_pairs()) {
            let q = pairs.join("&");
            let normalized = normalize_query(Some(&q));
            let out: Vec<&str> = normalized.split('&').filter(|p| !p.is_empty()).collect();
            let mut sorted_in: Vec<&str> = pairs.iter().map(String::as_str).filter(|p| !p.is_empty()).collect();
            let mut sorted_out = out.clone();
            sorted_in.sort_unstable();
            sorted_out.sort_unstable();
            prop_assert_eq!(sorted_in, sorted_out, "{:?} → {:?}", q, normalized);
            prop_assert!(out.windows(2).all(|w| name(w[0]) <= name(w[1])), "{q:?} → {normalized:?}");
        }

        /// Pairs of different names in any order are one query; a repeated name's values keep
        /// their order (upstream may read it).
        #[test]
        fn normalized_query_ignores_the_order_of_names(
            (pairs, order) in query_pairs().prop_flat_map(|p| {
                let n = p.len();
                (Just(p), Just((0..n).collect::<Vec<usize>>()).prop_shuffle())
            })
        ) {
            // Shuffle, then put each name's values back in their first order.
            let mut shuffled: Vec<&str> = order.iter().map(|&i| pairs[i].as_str()).collect();
            let mut by_name: std::collections::HashMap<&str, std::collections::VecDeque<&str>> =
                std::collections::HashMap::new();
            for p in &pairs {
                by_name.entry(name(p)).or_default().push_back(p);
            }
            for slot in shuffled.iter_mut() {
                *slot = by_name.get_mut(name(slot)).unwrap().pop_front().unwrap();
            }
            let q = pairs.join("&");
            let other = shuffled.join("&");
            prop_assert_eq!(normalize_query(Some(&q)), normalize_query(Some(&other)), "{:?} vs {:?}", q, other);
        }
    }
}
