//! The PATCH page's rules for an agent version: which fields exist and what they hold, a body
//! checked whole before anything is applied, objects merged and arrays replaced.
//!
//! The field list is the union of the PATCH page's request schema and its request example; the
//! nested fields are the ones the GET page shows. Fields the schema does not name are dropped, at
//! every depth, as DialNexa's validation pipe (class-validator with a whitelist) does. The messages
//! are class-validator's, with the field's dotted path, because that is what DialNexa answers.

use serde_json::{Map, Value};

/// What a field may hold. `nullable` on [`Field`] additionally admits `null`.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Flag,
    Number,
    /// A number from 0 to 1 (the speech knobs whose example value is 0.5).
    Fraction,
    /// A whole number, 0 or more (durations, counts).
    Count,
    /// A whole number, 1 or more (`version_number`).
    Ordinal,
    OneOf(&'static [&'static str]),
    /// Only the listed keys are kept; merged into what is stored.
    Object(&'static [Field]),
    /// An array of objects, replaced whole.
    Objects,
    /// An array of anything, replaced whole.
    List,
    /// The caller's own data (dynamic variables, node positions), stored as sent.
    Free,
}

#[derive(Clone, Copy)]
struct Field {
    name: &'static str,
    kind: Kind,
    nullable: bool,
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        nullable: false,
    }
}

const fn n(name: &'static str, kind: Kind) -> Field {
    Field {
        name,
        kind,
        nullable: true,
    }
}

pub(super) const PIPELINE_TYPES: &[&str] = &["Cascaded", "Speech_To_Speech"];

const PROMPTS: &[Field] = &[
    f("prompt_text", Kind::Text),
    n("welcome_message", Kind::Text),
    n("node_positions", Kind::Free),
    n("json_output_instructions", Kind::Free),
    n("default_dynamic_variables", Kind::Free),
];
const VOICE_SETTINGS: &[Field] = &[
    f("speed", Kind::Number),
    f("temperature", Kind::Number),
    f("volume", Kind::Number),
    n("pitch", Kind::Number),
    f("fallback_voices", Kind::List),
    f("pronunciations", Kind::Objects),
];
const VOICE: &[Field] = &[
    n("id", Kind::Text),
    n("model_id", Kind::Text),
    f("settings", Kind::Object(VOICE_SETTINGS)),
];
const LLM_SETTINGS: &[Field] = &[
    f("temperature", Kind::Number),
    f("structured_output", Kind::Flag),
];
const LLM_FALLBACK: &[Field] = &[
    n("fallback_llm_enabled", Kind::Flag),
    n("llm_fallback_delay_ms", Kind::Count),
    n("llm_fallback_model", Kind::Text),
    n("fall_back_llm_id", Kind::Text),
];
const LLM: &[Field] = &[
    n("id", Kind::Text),
    f("settings", Kind::Object(LLM_SETTINGS)),
    f("fallback", Kind::Object(LLM_FALLBACK)),
];
const PHONE: &[Field] = &[n("id", Kind::Text), n("details", Kind::Free)];
const CALL_LIMITS: &[Field] = &[
    f("end_call_on_silence_sec", Kind::Count),
    f("max_call_duration_sec", Kind::Count),
    f("pause_before_speaking_sec", Kind::Number),
    f("ring_duration_sec", Kind::Count),
];
const VOICEMAIL: &[Field] = &[
    f("voicemail_detection", Kind::Flag),
    f("hangup_on_voicemail", Kind::Flag),
    n("voicemail_message", Kind::Text),
];
const TELEPHONY: &[Field] = &[
    f("inbound", Kind::Object(PHONE)),
    f("outbound", Kind::Object(PHONE)),
    f("call_limits", Kind::Object(CALL_LIMITS)),
    f("voicemail", Kind::Object(VOICEMAIL)),
];
/// The speech fields that a version also shows at its own top level (the GET page has both).
pub(super) const SPEECH_MIRRORED: &[&str] = &[
    "transcriber_id",
    "fallback_stt_enabled",
    "stt_fallback_transcriber_id",
    "stt_fallback_wait_ms",
    "audio_cache_enabled",
];
const SPEECH: &[Field] = &[
    n("background_sound", Kind::Text),
    f("responsiveness", Kind::Fraction),
    f("interruption_sensitivity", Kind::Fraction),
    f("backchanneling", Kind::Flag),
    f("backchannel_frequency", Kind::Fraction),
    f("transcription_mode", Kind::Text),
    f("denoising_mode", Kind::Text),
    f("speech_normalization", Kind::Flag),
    f("transcript_formatting", Kind::Flag),
    f("transcriber_id", Kind::Text),
    f("fallback_stt_enabled", Kind::Flag),
    n("stt_fallback_transcriber_id", Kind::Text),
    f("stt_fallback_wait_ms", Kind::Count),
    f("audio_cache_enabled", Kind::Flag),
];
const REMINDERS: &[Field] = &[
    f("reminder_message_interval", Kind::Count),
    f("reminder_message_frequency", Kind::Count),
];
const SECURITY: &[Field] = &[
    f("opt_out_sensitive_data_storage", Kind::Flag),
    f("opt_in_secure_urls", Kind::Flag),
];
const ANALYSIS: &[Field] = &[f("postcall_analysis", Kind::Objects)];

/// Everything a PATCH (or a POST) body may hold. The first five are not stored as sent:
/// see [`Changes`].
const BODY: &[Field] = &[
    f("version_number", Kind::Ordinal),
    f("pipeline_type", Kind::OneOf(PIPELINE_TYPES)),
    f("is_deployement", Kind::Flag),
    n("inbound_phone_number_id", Kind::Text),
    n("outbound_phone_number_id", Kind::Text),
    f("title", Kind::Text),
    f("is_published", Kind::Flag),
    f("conversation_start_type", Kind::OneOf(&["agent", "user"])),
    f("allow_interruptions", Kind::Flag),
    f("prompts", Kind::Object(PROMPTS)),
    f("voice", Kind::Object(VOICE)),
    f("llm", Kind::Object(LLM)),
    f("telephony", Kind::Object(TELEPHONY)),
    f("speech", Kind::Object(SPEECH)),
    f("reminders", Kind::Object(REMINDERS)),
    f("security", Kind::Object(SECURITY)),
    f("analysis", Kind::Object(ANALYSIS)),
    f("functions", Kind::Objects),
];

/// A body that broke the rules: every problem found, one message each, naming the field.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid agent fields: {}", .0.join("; "))]
pub struct Invalid(pub Vec<String>);

/// A checked body, split by where each part goes.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Changes {
    /// The version the body names; `None` is the agent's current one.
    pub version_number: Option<u64>,
    /// Stored with the version, shown at the agent's top level.
    pub pipeline_type: Option<String>,
    /// What is merged into the version (the `current_version` object). The phone number ids
    /// are already moved to `telephony.inbound.id` / `telephony.outbound.id`, where GET shows them.
    pub version: Map<String, Value>,
}

/// Checks the whole body and keeps only the fields the schema names. `is_deployement` is a
/// deployment action, not a stored field, so it is checked and then dropped.
pub(super) fn check(body: &Map<String, Value>) -> Result<Changes, Invalid> {
    let mut problems = Vec::new();
    let mut kept = check_object(body, "", BODY, &mut problems);
    if !problems.is_empty() {
        return Err(Invalid(problems));
    }
    let version_number = kept.remove("version_number").and_then(|v| v.as_u64());
    let pipeline_type = match kept.remove("pipeline_type") {
        Some(Value::String(kind)) => Some(kind),
        _ => None,
    };
    kept.remove("is_deployement");
    for (key, side) in [
        ("inbound_phone_number_id", "inbound"),
        ("outbound_phone_number_id", "outbound"),
    ] {
        if let Some(id) = kept.remove(key) {
            let phone = Value::Object(Map::from_iter([("id".to_owned(), id)]));
            let change = Map::from_iter([(side.to_owned(), phone)]);
            merge(
                &mut kept,
                Map::from_iter([("telephony".to_owned(), change.into())]),
            );
        }
    }
    Ok(Changes {
        version_number,
        pipeline_type,
        version: kept,
    })
}

fn check_object(
    object: &Map<String, Value>,
    prefix: &str,
    fields: &[Field],
    problems: &mut Vec<String>,
) -> Map<String, Value> {
    let mut kept = Map::new();
    for field in fields {
        let Some(value) = object.get(field.name) else {
            continue;
        };
        let path = if prefix.is_empty() {
            field.name.to_owned()
        } else {
            format!("{prefix}.{}", field.name)
        };
        if value.is_null() && field.nullable {
            kept.insert(field.name.to_owned(), Value::Null);
        } else if let Some(value) = check_value(value, &path, field.kind, problems) {
            kept.insert(field.name.to_owned(), value);
        }
    }
    kept
}

/// The value to keep, or `None` with the problem recorded.
fn check_value(value: &Value, path: &str, kind: Kind, problems: &mut Vec<String>) -> Option<Value> {
    let problem = match kind {
        Kind::Text if !value.is_string() => format!("{path} must be a string"),
        Kind::Flag if !value.is_boolean() => format!("{path} must be a boolean value"),
        Kind::Number | Kind::Fraction if !value.is_number() => {
            format!("{path} must be a number conforming to the specified constraints")
        }
        Kind::Fraction => match value.as_f64() {
            Some(x) if x < 0.0 => format!("{path} must not be less than 0"),
            Some(x) if x > 1.0 => format!("{path} must not be greater than 1"),
            _ => return Some(value.clone()),
        },
        Kind::Count | Kind::Ordinal => {
            let least = if matches!(kind, Kind::Ordinal) { 1 } else { 0 };
            match whole(value) {
                None => format!("{path} must be an integer number"),
                Some(x) if x < least => format!("{path} must not be less than {least}"),
                // Stored as a plain integer, so `500.0` reads back as `500`.
                Some(x) => return Some(Value::from(x)),
            }
        }
        Kind::OneOf(allowed) if !allowed.iter().any(|a| value.as_str() == Some(a)) => {
            format!(
                "{path} must be one of the following values: {}",
                allowed.join(", ")
            )
        }
        Kind::Object(fields) => match value {
            Value::Object(inner) => {
                return Some(Value::Object(check_object(inner, path, fields, problems)))
            }
            _ => format!("{path} must be an object"),
        },
        Kind::Objects => match value {
            Value::Array(items) if items.iter().all(Value::is_object) => {
                return Some(value.clone())
            }
            Value::Array(_) => format!("each value in {path} must be an object"),
            _ => format!("{path} must be an array"),
        },
        Kind::List if !value.is_array() => format!("{path} must be an array"),
        _ => return Some(value.clone()),
    };
    problems.push(problem);
    None
}

/// A JSON number that is a whole number (JavaScript's `Number.isInteger`: `3.0` counts).
fn whole(value: &Value) -> Option<i64> {
    if let Some(i) = value.as_i64() {
        return Some(i);
    }
    let x = value.as_f64()?;
    // The range check keeps the cast exact; larger values are not counts anyone sends.
    (x.fract() == 0.0 && x.abs() < 9.0e15).then_some(x as i64)
}

/// Objects merge key by key (recursively); anything else, arrays and `null` included, replaces.
/// Depth is bounded by the schema (checked bodies) or by serde_json's nesting limit of 128.
pub(super) fn merge(target: &mut Map<String, Value>, changes: Map<String, Value>) {
    for (key, value) in changes {
        match (target.get_mut(&key), value) {
            (Some(Value::Object(existing)), Value::Object(inner)) => merge(existing, inner),
            (_, value) => {
                target.insert(key, value);
            }
        }
    }
}

/// Copies the mirrored `speech.*` fields to the version's top level, where GET also shows them,
/// so the two never disagree after a PATCH of either.
pub(super) fn mirror_speech(version: &mut Map<String, Value>) {
    let Some(Value::Object(speech)) = version.get("speech") else {
        return;
    };
    let copies: Vec<(String, Value)> = SPEECH_MIRRORED
        .iter()
        .filter_map(|key| speech.get(*key).map(|v| ((*key).to_owned(), v.clone())))
        .collect();
    version.extend(copies);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::agents::{AgentError, AgentStore};
    use super::*;

    const AGENT: &str = "agt_abc123";
    /// Has versions 1 (published) and 2 (current draft).
    const VERSIONED: &str = "agt_k7m2nq9xw4p8";

    fn body(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn get(store: &AgentStore, id: &str, version: Option<u64>) -> Value {
        serde_json::to_value(store.get(id, version).unwrap()).unwrap()
    }

    fn patch(store: &mut AgentStore, id: &str, changes: Value) -> Result<Value, AgentError> {
        store
            .patch(id, &body(changes))
            .map(|view| serde_json::to_value(view).unwrap())
    }

    fn problems(result: Result<Value, AgentError>) -> Vec<String> {
        match result {
            Err(AgentError::Invalid(Invalid(problems))) => problems,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn objects_merge_key_by_key_and_arrays_are_replaced() {
        let mut store = AgentStore::seeded();
        let before = get(&store, AGENT, None);
        let changes = json!({
            "speech": {"backchanneling": true, "responsiveness": 0.8},
            "llm": {"settings": {"temperature": 0.3}},
            "functions": [{"display_name": "Only one", "type": "end_call"}],
            "analysis": {"postcall_analysis": []},
        });
        let after = patch(&mut store, AGENT, changes).unwrap();
        let (was, now) = (&before["current_version"], &after["current_version"]);
        assert_eq!(now["speech"]["backchanneling"], true);
        assert_eq!(now["speech"]["responsiveness"], 0.8);
        for key in [
            "transcriber_id",
            "denoising_mode",
            "interruption_sensitivity",
        ] {
            assert_eq!(now["speech"][key], was["speech"][key], "speech.{key} kept");
        }
        assert_eq!(now["llm"]["settings"]["temperature"], 0.3);
        assert_eq!(now["llm"]["settings"]["structured_output"], true);
        assert_eq!(now["llm"]["id"], was["llm"]["id"]);
        assert_eq!(
            now["functions"],
            json!([{"display_name": "Only one", "type": "end_call"}])
        );
        assert_eq!(now["analysis"]["postcall_analysis"], json!([]));
        assert_eq!(now["title"], was["title"]);
        assert_eq!(
            after,
            get(&store, AGENT, None),
            "the answer is the stored agent"
        );
    }

    #[test]
    fn unknown_fields_are_ignored_at_every_depth() {
        let mut store = AgentStore::seeded();
        let before = get(&store, AGENT, None);
        let changes = json!({"nickname": "x", "speech": {"warp_drive": true}, "id": "agt_other",
                             "current_version_number": 9, "organization_id": "org_evil"});
        let after = patch(&mut store, AGENT, changes).unwrap();
        assert_eq!(after["current_version"], before["current_version"]);
        assert_eq!(after["id"], AGENT);
        assert_eq!(after["organization_id"], before["organization_id"]);
        assert_eq!(after["current_version_number"], 1);
        assert!(after.get("nickname").is_none());
        assert!(after["current_version"]["speech"]
            .get("warp_drive")
            .is_none());
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named_and_nothing_changes() {
        let mut store = AgentStore::seeded();
        let before = get(&store, AGENT, None);
        // Valid changes beside the bad one must not be applied either.
        let changes = json!({"title": "Renamed", "speech": {"backchanneling": "yes"}});
        assert_eq!(
            problems(patch(&mut store, AGENT, changes)),
            ["speech.backchanneling must be a boolean value"]
        );
        assert_eq!(get(&store, AGENT, None), before, "updatedAt included");
    }

    #[test]
    fn every_problem_is_reported_at_once_in_class_validator_words() {
        let mut store = AgentStore::seeded();
        let changes = json!({
            "title": 5, "is_published": "true", "prompts": "hello", "functions": {},
            "voice": {"settings": {"speed": "fast"}},
            "speech": {"responsiveness": 1.5, "interruption_sensitivity": -0.1, "stt_fallback_wait_ms": 2.5},
            "telephony": {"call_limits": {"max_call_duration_sec": -1}},
            "analysis": {"postcall_analysis": ["qualified"]},
            "version_number": 0,
        });
        assert_eq!(
            problems(patch(&mut store, AGENT, changes)),
            [
                "version_number must not be less than 1",
                "title must be a string",
                "is_published must be a boolean value",
                "prompts must be an object",
                "voice.settings.speed must be a number conforming to the specified constraints",
                "telephony.call_limits.max_call_duration_sec must not be less than 0",
                "speech.responsiveness must not be greater than 1",
                "speech.interruption_sensitivity must not be less than 0",
                "speech.stt_fallback_wait_ms must be an integer number",
                "each value in analysis.postcall_analysis must be an object",
                "functions must be an array",
            ]
        );
    }

    #[test]
    fn pipeline_type_is_cascaded_or_speech_to_speech_only() {
        let mut store = AgentStore::seeded();
        for bad in [json!("Telepathy"), json!("cascaded"), json!(null), json!(1)] {
            let result = patch(&mut store, AGENT, json!({"pipeline_type": bad}));
            assert_eq!(
                problems(result),
                ["pipeline_type must be one of the following values: Cascaded, Speech_To_Speech"]
            );
        }
        assert_eq!(get(&store, AGENT, None)["pipeline_type"], "Cascaded");
        for good in ["Speech_To_Speech", "Cascaded"] {
            let after = patch(&mut store, AGENT, json!({"pipeline_type": good})).unwrap();
            assert_eq!(after["pipeline_type"], good);
        }
    }

    #[test]
    fn version_number_selects_the_version_and_an_unknown_one_is_not_found() {
        let mut store = AgentStore::seeded();
        let draft_before = get(&store, VERSIONED, Some(2));
        let changes = json!({"version_number": 1, "title": "Published title",
                             "pipeline_type": "Speech_To_Speech"});
        let after = patch(&mut store, VERSIONED, changes).unwrap();
        assert_eq!(after["current_version"]["number"], 1);
        assert_eq!(after["current_version"]["title"], "Published title");
        assert_eq!(after["pipeline_type"], "Speech_To_Speech");
        assert_eq!(after["current_version_number"], 2, "still the current one");
        let draft = get(&store, VERSIONED, None);
        assert_eq!(draft["current_version"], draft_before["current_version"]);
        assert_eq!(draft["pipeline_type"], "Cascaded");

        let unknown = patch(
            &mut store,
            VERSIONED,
            json!({"version_number": 7, "title": "x"}),
        );
        assert!(matches!(
            unknown,
            Err(AgentError::VersionNotFound { version: 7, .. })
        ));
        assert!(matches!(
            store.get(VERSIONED, Some(7)),
            Err(AgentError::VersionNotFound { .. })
        ));
        let missing = patch(&mut store, "agt_nobody", json!({"title": "x"}));
        assert!(matches!(missing, Err(AgentError::AgentNotFound(_))));
    }

    #[test]
    fn a_bad_body_is_refused_before_the_agent_is_looked_up() {
        let mut store = AgentStore::seeded();
        let result = patch(&mut store, "agt_nobody", json!({"title": false}));
        assert_eq!(problems(result), ["title must be a string"]);
    }

    #[test]
    fn nullable_fields_take_null_and_others_refuse_it() {
        let mut store = AgentStore::seeded();
        let changes = json!({"voice": {"model_id": null}, "llm": {"id": null},
                             "speech": {"background_sound": null}});
        let after = patch(&mut store, AGENT, changes).unwrap();
        assert_eq!(after["current_version"]["voice"]["model_id"], Value::Null);
        assert_eq!(after["current_version"]["voice"]["id"], "voice_xyz");
        assert_eq!(after["current_version"]["llm"]["id"], Value::Null);
        let refused = patch(&mut store, AGENT, json!({"title": null, "speech": null}));
        assert_eq!(
            problems(refused),
            ["title must be a string", "speech must be an object"]
        );
    }

    #[test]
    fn speech_fields_stay_mirrored_at_the_version_top_level() {
        let mut store = AgentStore::seeded();
        let changes = json!({"speech": {"transcriber_id": "tr0soniox001xx", "audio_cache_enabled": false,
                                        "stt_fallback_wait_ms": 750.0}});
        let after = patch(&mut store, AGENT, changes).unwrap();
        let version = &after["current_version"];
        assert_eq!(version["transcriber_id"], "tr0soniox001xx");
        assert_eq!(version["audio_cache_enabled"], false);
        // A whole number sent as 750.0 is stored as the integer it is.
        assert_eq!(version["stt_fallback_wait_ms"], json!(750));
        assert_eq!(version["speech"]["stt_fallback_wait_ms"], json!(750));
    }

    #[test]
    fn phone_number_ids_land_in_telephony_and_deployment_is_not_stored() {
        let mut store = AgentStore::seeded();
        let changes = json!({"inbound_phone_number_id": "phn_new", "outbound_phone_number_id": null,
                             "is_deployement": true,
                             "telephony": {"voicemail": {"voicemail_message": "We'll call you back."}}});
        let after = patch(&mut store, AGENT, changes).unwrap();
        let telephony = &after["current_version"]["telephony"];
        assert_eq!(
            telephony["inbound"],
            json!({"id": "phn_new", "details": null})
        );
        assert_eq!(telephony["outbound"]["id"], Value::Null);
        assert_eq!(telephony["call_limits"]["max_call_duration_sec"], 600);
        assert_eq!(
            telephony["voicemail"],
            json!({"voicemail_message": "We'll call you back."})
        );
        assert!(after["current_version"].get("is_deployement").is_none());
        let refused = patch(&mut store, AGENT, json!({"is_deployement": "yes"}));
        assert_eq!(
            problems(refused),
            ["is_deployement must be a boolean value"]
        );
    }

    #[test]
    fn updated_at_moves_on_every_write_even_within_a_millisecond() {
        let mut store = AgentStore::seeded();
        let created = serde_json::to_value(store.create(&Map::new()).unwrap()).unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        let mut last = created["updatedAt"].as_str().unwrap().to_owned();
        for _ in 0..3 {
            let after = patch(&mut store, &id, json!({"title": "t"})).unwrap();
            let now = after["updatedAt"].as_str().unwrap().to_owned();
            assert!(now > last, "{now} after {last}");
            assert_eq!(after["createdAt"], created["createdAt"]);
            last = now;
        }
    }

    #[test]
    fn merge_recurses_into_objects_only() {
        let mut target = body(json!({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": {"f": 1}}));
        merge(
            &mut target,
            body(json!({"a": {"c": [], "g": null}, "d": {"h": 1}, "e": null})),
        );
        assert_eq!(
            Value::Object(target),
            json!({"a": {"b": 1, "c": [], "g": null}, "d": {"h": 1}, "e": null})
        );
    }

    #[test]
    fn the_seed_has_both_pipelines_and_agents_of_about_three_kilobytes() {
        let store = AgentStore::seeded();
        let agents = store.list();
        assert_eq!(agents.len(), 3);
        let mut pipelines = Vec::new();
        for agent in &agents {
            let value = serde_json::to_value(agent).unwrap();
            let size = serde_json::to_string(agent).unwrap().len();
            assert!(
                (2048..=4096).contains(&size),
                "{} is {size} bytes",
                value["id"]
            );
            assert!(value["id"].as_str().unwrap().starts_with("agt_"));
            let version = &value["current_version"];
            assert_eq!(version["agent_id"], value["id"]);
            assert_eq!(version["number"], value["current_version_number"]);
            pipelines.push(value["pipeline_type"].as_str().unwrap().to_owned());
        }
        for pipeline in PIPELINE_TYPES {
            assert!(pipelines.iter().any(|p| p == pipeline), "{pipeline} seeded");
        }
    }
}
