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
