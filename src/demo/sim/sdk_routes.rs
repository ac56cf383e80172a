//! The other routes the Python SDK `dialnexa` 0.1.1 calls: languages, LLMs and voices (read-only
//! catalogues), calls (listed, fetched and placed) and batch calls (a CSV upload), answered with
//! plausible bodies from `catalog.json` so code written against the SDK runs end to end.

use std::time::SystemTime;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::patch::Invalid;
use super::reply::{self, positive_param, query_param, Listing, Refusal, Reply};
use super::Simulator;

const CATALOG: &str = include_str!("catalog.json");
const DEFAULT_PAGE_SIZE: u64 = 30;
const MAX_PAGE_SIZE: u64 = 100;

#[derive(Deserialize)]
pub(super) struct Catalog {
    languages: Vec<Value>,
    llms: Vec<Value>,
    voices: Vec<Value>,
    /// Newest first, as listings show them; placed calls are put in front.
    calls: Vec<Value>,
}

impl Catalog {
    /// The file is part of the binary and a unit test parses it: failing here is a build defect.
    pub fn seeded() -> Self {
        let mut catalog: Catalog =
            serde_json::from_str(CATALOG).expect("catalog.json matches the catalogue shape");
        catalog
            .calls
            .sort_by(|a, b| b["createdAt"].as_str().cmp(&a["createdAt"].as_str()));
        catalog
    }
}

/// The answer for one of these routes, or `Ok(None)` when the path or method is not one of them.
pub(super) fn route(
    sim: &Simulator,
    method: &Method,
    segments: &[&str],
    query: Option<&str>,
    body: &Bytes,
) -> Result<Option<Reply>, Refusal> {
    let catalog = sim.catalog();
    let reply = match (method, segments) {
        (&Method::GET | &Method::HEAD, [name]) => match name.to_ascii_lowercase().as_str() {
            "languages" => reply::ok(&Listing::whole(catalog.languages.clone())),
            // The SDK types this one as a list, not a page.
            "llms" => reply::ok(&catalog.llms),
            "voices" => page(query, &catalog.voices, |voice| {
                ["provider_name", "accent", "gender"].iter().all(|key| {
                    wanted(query, key, |want| {
                        voice[*key]
                            .as_str()
                            .is_some_and(|v| v.eq_ignore_ascii_case(want))
                    })
                }) && wanted(query, "name", |want| {
                    voice["name"]
                        .as_str()
                        .is_some_and(|v| v.to_lowercase().contains(&want.to_lowercase()))
                })
            })?,
            "calls" => page(query, &catalog.calls, |call| {
                [("agent_id", "agent_id"), ("call_id", "id"), ("batch_call_id", "batch_call_id")]
                    .iter()
                    .all(|(param, key)| wanted(query, param, |want| call[*key].as_str() == Some(want)))
                    // Same format, so text order is time order; a bare date compares as its midnight.
                    && wanted(query, "from", |from| call["createdAt"].as_str().is_some_and(|at| at >= from))
            })?,
            _ => return Ok(None),
        },
        (&Method::GET | &Method::HEAD, [name, id]) => {
            let (list, what) = match name.to_ascii_lowercase().as_str() {
                "languages" => (&catalog.languages, "Language"),
                "llms" => (&catalog.llms, "LLM"),
                "voices" => (&catalog.voices, "Voice"),
                "calls" => (&catalog.calls, "Call"),
                _ => return Ok(None),
            };
            match list.iter().find(|item| item["id"].as_str() == Some(id)) {
                Some(item) => reply::ok(item),
                None => return Err(Refusal::NotFound(format!("{what} {id} not found"))),
            }
        }
        (&Method::POST, [name]) if name.eq_ignore_ascii_case("calls") => {
            drop(catalog);
            place_call(sim, body)?
        }
        (&Method::POST, [name]) if name.eq_ignore_ascii_case("batch-calls") => {
            drop(catalog);
            batch_call(sim, body)?
        }
        _ => return Ok(None),
    };
    Ok(Some(reply))
}

/// Whether an item passes filter `name`: it does when the query has no such parameter.
fn wanted(query: Option<&str>, name: &str, pass: impl Fn(&str) -> bool) -> bool {
    query_param(query, name).is_none_or(|want| pass(&want))
}

/// `{"data", "total", "page", "limit"}` over the items `keep` lets through.
fn page(
    query: Option<&str>,
    items: &[Value],
    keep: impl Fn(&Value) -> bool,
) -> Result<Reply, Refusal> {
    let page = positive_param(query, "page")?.unwrap_or(1);
    let limit = positive_param(query, "limit")?
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .min(MAX_PAGE_SIZE);
    let matching: Vec<&Value> = items.iter().filter(|item| keep(item)).collect();
    let skip = usize::try_from((page - 1).saturating_mul(limit)).unwrap_or(usize::MAX);
    let data: Vec<&Value> = matching
        .iter()
        .skip(skip)
        .take(limit as usize)
        .copied()
        .collect();
    Ok(reply::ok(&Listing {
        data,
        total: matching.len(),
        page: Some(page),
        limit: Some(limit),
    }))
}

/// `POST /calls`: the SDK's four required fields, the agent's version must exist; the call is
/// queued (nothing dials) and shows up in the listing.
fn place_call(sim: &Simulator, body: &Bytes) -> Result<Reply, Refusal> {
    let body = reply::json_object(body)?;
    let mut problems = Vec::new();
    let text = |name: &str, problems: &mut Vec<String>| match body.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            problems.push(format!("{name} should not be empty"));
            None
        }
        Some(_) => {
            problems.push(format!("{name} must be a string"));
            None
        }
    };
    let phone = text("phone_number", &mut problems);
    let agent_id = text("agent_id", &mut problems);
    if phone.as_deref().is_some_and(|p| !is_e164(p)) {
        problems.push("phone_number must be a valid phone number".into());
    }
    let metadata = match body.get("metadata") {
        Some(Value::Object(m)) => Value::Object(m.clone()),
        _ => {
            problems.push("metadata must be an object".into());
            Value::Null
        }
    };
    let version = body.get("agent_version_number").and_then(Value::as_u64);
    if version.is_none() {
        problems.push("agent_version_number must be an integer number".into());
    }
    let (Some(phone), Some(agent_id), Some(version), true) =
        (phone, agent_id, version, problems.is_empty())
    else {
        return Err(Invalid(problems).into());
    };
    sim.agents().has_version(&agent_id, version)?;
    let mut catalog = sim.catalog();
    let id = super::fresh_id("call", |id| catalog.calls.iter().any(|c| c["id"] == id));
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let call = json!({
        "id": id, "agent_id": agent_id, "agent_version_number": version, "batch_call_id": null,
        "direction": "outbound", "from_number": null, "to_number": phone, "status": "queued",
        "duration_sec": null, "metadata": metadata, "createdAt": now, "updatedAt": now,
    });
    catalog.calls.insert(0, call.clone());
    Ok(reply::json(StatusCode::CREATED, &call))
}

/// `POST /batch-calls`: a multipart form with the leads file and three fields. The file is not
/// dialled; its data rows are counted.
fn batch_call(sim: &Simulator, body: &Bytes) -> Result<Reply, Refusal> {
    let text = String::from_utf8_lossy(body);
    let field = |name: &str| form_field(&text, name).filter(|v| !v.trim().is_empty());
    let mut problems = Vec::new();
    for name in ["file", "title", "agent_id", "agent_version_number"] {
        if field(name).is_none() {
            problems.push(format!("{name} should not be empty"));
        }
    }
    let version = field("agent_version_number").and_then(|v| v.trim().parse::<u64>().ok());
    if problems.is_empty() && version.is_none() {
        problems.push("agent_version_number must be an integer number".into());
    }
    let (Some(title), Some(agent_id), Some(version), Some(file), true) = (
        field("title"),
        field("agent_id"),
        version,
        field("file"),
        problems.is_empty(),
    ) else {
        return Err(Invalid(problems).into());
    };
    sim.agents().has_version(&agent_id, version)?;
    // The first line is the CSV header.
    let leads = file
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
        .saturating_sub(1);
    let mut answer = Map::new();
    answer.insert("id".into(), super::fresh_id("bat", |_| false).into());
    answer.insert("title".into(), title.into());
    answer.insert("agent_id".into(), agent_id.into());
    answer.insert("agent_version_number".into(), version.into());
    answer.insert("status".into(), "queued".into());
    answer.insert("total_calls".into(), leads.into());
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    answer.insert("createdAt".into(), now.into());
    Ok(reply::json(StatusCode::CREATED, &answer))
}

/// The value of form field `name` in a `multipart/form-data` body: what lies between the blank
/// line after its `Content-Disposition` and the next boundary line.
fn form_field(body: &str, name: &str) -> Option<String> {
    let boundary = body.lines().next()?.trim_end();
    let marker = format!("name=\"{name}\"");
    body.split(boundary).find_map(|part| {
        let (head, value) = part.split_once("\r\n\r\n")?;
        head.lines()
            .any(|line| {
                line.to_ascii_lowercase()
                    .starts_with("content-disposition:")
                    && line.contains(&marker)
            })
            .then(|| value.strip_suffix("\r\n").unwrap_or(value).to_owned())
    })
}

/// `+` and 7 to 15 digits.
fn is_e164(phone: &str) -> bool {
    phone.strip_prefix('+').is_some_and(|digits| {
        (7..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_parses_and_lists_calls_newest_first() {
        let catalog = Catalog::seeded();
        assert!(!catalog.languages.is_empty() && !catalog.llms.is_empty());
        assert!(!catalog.voices.is_empty());
        let times: Vec<&str> = catalog
            .calls
            .iter()
            .map(|c| c["createdAt"].as_str().unwrap())
            .collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    }

    #[test]
    fn form_fields_are_read_from_a_multipart_body() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nMay leads\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"leads.csv\"\r\n\
                    Content-Type: text/csv\r\n\r\nphone\r\n+14155550100\r\n\r\n--XyZ--\r\n";
        assert_eq!(form_field(body, "title").as_deref(), Some("May leads"));
        assert_eq!(
            form_field(body, "file").as_deref(),
            Some("phone\r\n+14155550100\r\n")
        );
        assert_eq!(form_field(body, "agent_id"), None);
        assert_eq!(form_field("", "title"), None);
    }

    #[test]
    fn phone_numbers_must_be_e164() {
        assert!(is_e164("+14155550100"));
        for bad in ["14155550100", "+1", "+1415555010x", "+1234567890123456"] {
            assert!(!is_e164(bad), "{bad}");
        }
    }
}
