//! The simulated DialNexa (DESIGN.md, "The simulated DialNexa") over real sockets: the seed pages'
//! agent shape, the PATCH page's rules, DialNexa's auth, quota and error shapes, the legacy
//! routes and the SDK's other routes; then the gateway in front of it, and `sim` as a process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use dialnexa_gateway::demo::sim::{SimHandle, SimOptions, Simulator};
use dialnexa_gateway::settings::ConnectionLimits;

use crate::support::*;

const KEY: &str = "org-key-made-up-for-sim";
const AGENT: &str = "agt_abc123";
/// A seeded agent with versions 1 (published) and 2 (the current draft).
const VERSIONED: &str = "agt_k7m2nq9xw4p8";

async fn start(options: SimOptions) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::spawn_with(listener, options)
}

async fn sim() -> (SimHandle, Client) {
    let sim = start(SimOptions::new(KEY)).await;
    let client = Client::new(sim.addr);
    (sim, client)
}

async fn call(c: &Client, method: Method, path: &str, body: Option<Value>) -> TestResponse {
    let auth = bearer(KEY);
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    c.send(method, path, &headers, body).await
}

async fn get(c: &Client, path: &str) -> TestResponse {
    call(c, Method::GET, path, None).await
}

async fn patch(c: &Client, path: &str, body: Value) -> TestResponse {
    call(c, Method::PATCH, path, Some(body)).await
}

#[tokio::test]
async fn sim_get_answers_the_get_pages_agent_shape_under_v1_and_legacy_paths() {
    let (_sim, c) = sim().await;
    let r = get(&c, &format!("/v1/agents2/{AGENT}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    // The page's field order, as DialNexa serializes it.
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(
        text.starts_with(r#"{"id":"agt_abc123","organization_id":"org_xyz","folder_id":null,"current_version_number":1,"is_deleted":false,"createdAt":"#),
        "{text}"
    );
    assert!(text.ends_with(r#","pipeline_type":"Cascaded"}"#), "{text}");
    let agent = r.json();
    for key in ["updatedAt", "timezone", "current_version"] {
        assert!(agent.get(key).is_some(), "{key}");
    }
    let version = &agent["current_version"];
    for key in [
        "agent_id",
        "number",
        "title",
        "is_published",
        "language",
        "conversation_start_type",
        "allow_interruptions",
        "prompts",
        "voice",
        "llm",
        "telephony",
        "speech",
        "reminders",
        "security",
        "analysis",
        "functions",
    ] {
        assert!(version.get(key).is_some(), "current_version.{key}");
    }
    assert_eq!(version["agent_id"], AGENT);
    assert_eq!(version["speech"]["transcriber_id"], "tr0deepnova3xx");
    assert_eq!(version["language"]["details"]["code"], "en-US");
    assert!(
        (2048..=4096).contains(&r.body.len()),
        "{} bytes",
        r.body.len()
    );
    assert_eq!(r.header("x-ratelimit-limit"), Some("1000"));
    assert!(r.header("x-ratelimit-remaining").is_some());
    assert!(r.header("x-ratelimit-reset").is_some());

    // One store under both names, versioned or not.
    for path in [
        format!("/agents2/{AGENT}"),
        format!("/v1/agents/{AGENT}"),
        format!("/agents/{AGENT}"),
    ] {
        let same = get(&c, &path).await;
        assert_eq!(same.status, 200, "{path}");
        assert_eq!(same.json(), agent, "{path}");
    }
    let other_version = get(&c, "/v2/agents2/agt_abc123").await;
    assert_eq!(other_version.status, 404);
    assert_eq!(
        other_version.json()["message"],
        "Cannot GET /v2/agents2/agt_abc123"
    );
}

#[tokio::test]
async fn sim_version_number_in_the_query_selects_a_version() {
    let (_sim, c) = sim().await;
    let current = get(&c, &format!("/v1/agents2/{VERSIONED}")).await.json();
    assert_eq!(current["current_version_number"], 2);
    assert_eq!(current["current_version"]["number"], 2);
    let first = get(&c, &format!("/v1/agents2/{VERSIONED}?version_number=1")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["current_version"]["number"], 1);
    assert_eq!(first.json()["current_version_number"], 2);
    let missing = get(&c, &format!("/v1/agents2/{VERSIONED}?version_number=9")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.json(),
        json!({"statusCode": 404, "message": format!("Version 9 of agent {VERSIONED} not found"),
               "error": "Not Found"})
    );
    let bad = get(&c, &format!("/v1/agents2/{VERSIONED}?version_number=two")).await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["message"],
        json!(["version_number must be a positive integer number"])
    );
}

#[tokio::test]
async fn sim_patch_merges_objects_replaces_arrays_and_answers_the_updated_agent() {
    let (_sim, c) = sim().await;
    let path = format!("/v1/agents2/{AGENT}");
    let before = get(&c, &path).await.json();
    let changes = json!({
        "pipeline_type": "Speech_To_Speech",
        "speech": {"backchanneling": true, "fallback_stt_enabled": true},
        "llm": {"settings": {"temperature": 0.2}},
        "functions": [],
        "made_up_field": 1,
    });
    let r = patch(&c, &path, changes).await;
    assert_eq!(r.status, 200);
    let after = r.json();
    assert_eq!(after["pipeline_type"], "Speech_To_Speech");
    let (was, now) = (&before["current_version"], &after["current_version"]);
    assert_eq!(now["speech"]["backchanneling"], true);
    assert_eq!(now["speech"]["fallback_stt_enabled"], true);
    assert_eq!(
        now["fallback_stt_enabled"], true,
        "mirrored at the version's top level"
    );
    assert_eq!(
        now["speech"]["denoising_mode"],
        was["speech"]["denoising_mode"]
    );
    assert_eq!(now["llm"]["settings"]["temperature"], 0.2);
    assert_eq!(now["llm"]["settings"]["structured_output"], true);
    assert_eq!(now["functions"], json!([]));
    assert!(after.get("made_up_field").is_none() && now.get("made_up_field").is_none());
    assert!(after["updatedAt"].as_str() > before["updatedAt"].as_str());
    assert_eq!(after["createdAt"], before["createdAt"]);
    // The other family and the legacy path see the same write.
    assert_eq!(get(&c, &format!("/agents/{AGENT}")).await.json(), after);
}

#[tokio::test]
async fn sim_patch_with_a_bad_value_is_400_naming_the_field_and_changes_nothing() {
    let (_sim, c) = sim().await;
    let path = format!("/v1/agents2/{AGENT}");
    let before = get(&c, &path).await.json();
    let r = patch(
        &c,
        &path,
        json!({"title": "Renamed", "pipeline_type": "Telepathy", "speech": {"responsiveness": "fast"}}),
    )
    .await;
    assert_eq!(r.status, 400);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(
        text.starts_with(r#"{"statusCode":400,"message":["#),
        "{text}"
    );
    assert_eq!(
        r.json(),
        json!({"statusCode": 400, "error": "Bad Request", "message": [
            "pipeline_type must be one of the following values: Cascaded, Speech_To_Speech",
            "speech.responsiveness must be a number conforming to the specified constraints",
        ]})
    );
    assert_eq!(get(&c, &path).await.json(), before, "nothing changed");

    let not_json = c
        .send(
            Method::PATCH,
            &path,
            &[("authorization", &bearer(KEY))],
            "{not json",
        )
        .await;
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["error"], "Bad Request");
}

#[tokio::test]
async fn sim_patch_version_number_names_the_version_and_an_unknown_one_is_404() {
    let (_sim, c) = sim().await;
    let path = format!("/v1/agents2/{VERSIONED}");
    let r = patch(
        &c,
        &path,
        json!({"version_number": 1, "title": "Published v1"}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["current_version"]["number"], 1);
    assert_eq!(r.json()["current_version"]["title"], "Published v1");
    let v1 = get(&c, &format!("{path}?version_number=1")).await.json();
    assert_eq!(v1["current_version"]["title"], "Published v1");
    let current = get(&c, &path).await.json();
    assert_eq!(
        current["current_version"]["title"],
        "Sales Qualifier (draft)"
    );

    let unknown = patch(&c, &path, json!({"version_number": 42, "title": "x"})).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"], "Not Found");
    let missing = patch(&c, "/v1/agents2/agt_nobody00000", json!({"title": "x"})).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["message"], "Agent agt_nobody00000 not found");
}

#[tokio::test]
async fn sim_without_the_org_key_is_401_in_dialnexa_shape() {
    let (_sim, c) = sim().await;
    let expected = json!({"statusCode": 401, "message": "Invalid or missing API key",
                          "error": "Unauthorized"});
    for auth in [None, Some("Bearer wrong-key"), Some(KEY), Some("Bearer ")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let r = c.send(Method::GET, "/v1/agents2", &headers, "").await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.json(), expected);
        assert!(r.header("x-ratelimit-limit").is_none());
        assert!(!String::from_utf8_lossy(&r.body).contains("wrong-key"));
    }
}

#[tokio::test]
async fn sim_enforced_quota_is_429_with_retry_after_and_refusals_spend_nothing() {
    let quota = NonZeroU32::new(3).unwrap();
    let sim = start(SimOptions::new(KEY).rate_limit(quota)).await;
    let c = Client::new(sim.addr);
    // Unauthenticated requests are not the organisation's and do not count.
    let anonymous = c.send(Method::GET, "/v1/agents2", &[], "").await;
    assert_eq!(anonymous.status, 401);
    for remaining in ["2", "1", "0"] {
        let r = get(&c, &format!("/agents2/{AGENT}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
    }
    for _ in 0..2 {
        let r = get(&c, &format!("/v1/agents2/{AGENT}")).await;
        assert_eq!(r.status, 429);
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        let body = r.json();
        assert_eq!(body["statusCode"], 429);
        assert_eq!(body["error"], "Too Many Requests");
        assert!(body["message"].as_str().unwrap().contains("retry in"));
    }
}

#[tokio::test]
async fn sim_added_latency_delays_every_answer() {
    let sim = start(SimOptions::new(KEY).latency(Duration::from_millis(150))).await;
    let c = Client::new(sim.addr);
    let started = Instant::now();
    assert_eq!(get(&c, "/v1/agents2").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn sim_lists_creates_and_deletes_in_one_store_for_both_families() {
    let (sim, c) = sim().await;
    let list = get(&c, "/v1/agents").await.json();
    assert_eq!(list["total"], 3);
    let pipelines: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["pipeline_type"].as_str().unwrap())
        .collect();
    assert!(pipelines.contains(&"Cascaded") && pipelines.contains(&"Speech_To_Speech"));

    let body = json!({"title": "Front desk", "prompts": {"welcome_message": "Hi!"},
                      "pipeline_type": "Speech_To_Speech", "timezone": "Europe/Paris"});
    let created = call(&c, Method::POST, "/agents2", Some(body)).await;
    assert_eq!(created.status, 201);
    let agent = created.json();
    let id = agent["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("agt_") && id.len() == 16, "{id}");
    assert_eq!(agent["current_version_number"], 1);
    assert_eq!(agent["current_version"]["number"], 1);
    assert_eq!(agent["current_version"]["agent_id"], id.as_str());
    assert_eq!(agent["current_version"]["title"], "Front desk");
    assert_eq!(
        agent["current_version"]["prompts"]["welcome_message"],
        "Hi!"
    );
    assert_eq!(agent["pipeline_type"], "Speech_To_Speech");
    assert_eq!(agent["timezone"], "Europe/Paris");
    assert_eq!(agent["createdAt"], agent["updatedAt"]);
    assert_eq!(get(&c, &format!("/v1/agents/{id}")).await.json(), agent);
    assert_eq!(sim.agent_count(), 4);
    let refused = call(&c, Method::POST, "/v1/agents", Some(json!({"title": 1}))).await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["message"], json!(["title must be a string"]));

    let deleted = call(&c, Method::DELETE, &format!("/v1/agents/{id}"), None).await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json()["is_deleted"], true);
    for path in [format!("/v1/agents2/{id}"), format!("/agents/{id}")] {
        let gone = get(&c, &path).await;
        assert_eq!(gone.status, 404, "{path}");
        assert_eq!(
            gone.json(),
            json!({"statusCode": 404, "message": format!("Agent {id} not found"), "error": "Not Found"})
        );
    }
    assert_eq!(get(&c, "/agents2").await.json()["total"], 3);
    let again = call(&c, Method::DELETE, &format!("/v1/agents2/{id}"), None).await;
    assert_eq!(again.status, 404);
    let wrong = call(&c, Method::PUT, &format!("/v1/agents2/{AGENT}"), None).await;
    assert_eq!(wrong.status, 404);
    assert_eq!(
        wrong.json()["message"],
        format!("Cannot PUT /v1/agents2/{AGENT}")
    );
}

#[tokio::test]
async fn sim_answers_the_sdks_other_routes_plausibly() {
    let (_sim, c) = sim().await;
    // The SDK's calls.list always sends page and limit.
    let calls = get(&c, "/calls?page=1&limit=30").await;
    assert_eq!(calls.status, 200);
    let calls = calls.json();
    assert_eq!(
        (calls["page"].clone(), calls["limit"].clone()),
        (json!(1), json!(30))
    );
    assert!(calls["total"].as_u64().unwrap() >= 1);
    let first = &calls["data"][0];
    assert!(first["id"].as_str().unwrap().starts_with("call_"));
    let one = get(&c, &format!("/v1/calls/{}", first["id"].as_str().unwrap())).await;
    assert_eq!(one.json(), *first);
    let by_agent = get(&c, &format!("/calls?agent_id={VERSIONED}"))
        .await
        .json();
    assert!(by_agent["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["agent_id"] == VERSIONED));

    let placed = json!({"phone_number": "+14155550199", "agent_id": AGENT,
                        "metadata": {"order": "A-1"}, "agent_version_number": 1});
    let placed = call(&c, Method::POST, "/calls", Some(placed)).await;
    assert_eq!(placed.status, 201);
    let placed = placed.json();
    assert_eq!(placed["status"], "queued");
    assert_eq!(get(&c, "/calls").await.json()["data"][0], placed);
    let bad = json!({"phone_number": "call me", "agent_id": AGENT, "metadata": {}, "agent_version_number": 1});
    let bad = call(&c, Method::POST, "/calls", Some(bad)).await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["message"],
        json!(["phone_number must be a valid phone number"])
    );
    let no_version = json!({"phone_number": "+14155550199", "agent_id": AGENT, "metadata": {},
                            "agent_version_number": 5});
    assert_eq!(
        call(&c, Method::POST, "/calls", Some(no_version))
            .await
            .status,
        404
    );

    let languages = get(&c, "/languages").await.json();
    assert!(languages["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["id"] == "lang_en_us"));
    assert_eq!(
        get(&c, "/languages/lang_en_us").await.json()["code"],
        "en-US"
    );
    let llms = get(&c, "/v1/llms").await.json();
    assert!(llms
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["id"] == "llm_gpt4o"));
    let voices = get(&c, "/voices?gender=male&limit=1").await.json();
    assert_eq!(voices["data"].as_array().unwrap().len(), 1);
    assert_eq!(voices["data"][0]["gender"], "male");
    assert!(voices["total"].as_u64().unwrap() >= 2);
    assert_eq!(get(&c, "/voices/voice_xyz").await.json()["id"], "voice_xyz");
    assert_eq!(get(&c, "/voices/vce_nobody").await.status, 404);
}

/// The gateway in front of the simulator, as in `demo`: a PATCH through it changes what the
/// next GET shows, and DialNexa's own answers pass through untouched.
#[tokio::test]
async fn gateway_in_front_of_the_sim_shows_a_patch_on_the_next_get() {
    let sim = start(SimOptions::new(ORG_KEY_ACME)).await;
    let gw = GatewayBuilder::new(format!("http://{}/v1", sim.addr))
        .start()
        .await;
    let c = gw.client();
    let path = format!("/v1/agents2/{AGENT}");
    let first = c.get(&path, BILLING).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), "MISS");
    assert!(
        first.header("x-ratelimit-limit").is_some(),
        "the sim's quota passes through"
    );
    let hit = c.get(&path, BILLING).await;
    assert_eq!(hit.x_cache(), "HIT");
    assert_eq!(hit.json(), first.json());

    let changed = c
        .patch(
            &path,
            BILLING,
            r#"{"speech":{"backchanneling":true},"pipeline_type":"Speech_To_Speech"}"#,
        )
        .await;
    assert_eq!(changed.status, 200);
    let after = c.get(&path, SUPPORT).await;
    assert_eq!(after.x_cache(), "MISS");
    assert_eq!(after.json(), changed.json());
    assert_eq!(after.json()["pipeline_type"], "Speech_To_Speech");
    assert_eq!(
        after.json()["current_version"]["speech"]["backchanneling"],
        true
    );

    // The SDK's legacy path with X-Api-Key, served as /v1/agents2/...
    let legacy = c
        .send(
            Method::GET,
            &format!("/agents2/{AGENT}"),
            &[("x-api-key", BILLING)],
            "",
        )
        .await;
    assert_eq!(legacy.status, 200);
    assert_eq!(legacy.json(), changed.json());

    let refused = c
        .patch(&path, BILLING, r#"{"pipeline_type":"Telepathy"}"#)
        .await;
    assert_eq!(refused.status, 400);
    assert_eq!(
        refused.json()["message"],
        json!(["pipeline_type must be one of the following values: Cascaded, Speech_To_Speech"])
    );
    assert_eq!(c.get(&path, BILLING).await.json(), changed.json());
    gw.shutdown().await;
}

/// `dialnexa-gateway sim` as a process: prints its URL and key, serves, stops on SIGTERM with 0.
#[tokio::test]
async fn sim_subcommand_prints_its_url_and_key_and_stops_on_sigterm() {
    let mut child = Stopped(
        Command::new(env!("CARGO_BIN_EXE_dialnexa-gateway"))
            .args(["sim", "--listen", "127.0.0.1:0", "--rate-limit", "50"])
            .env("RUST_LOG", "warn")
            .env_remove("DNXGW_SIM_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (url, key) = tokio::task::spawn_blocking(move || {
        let (mut url, mut key) = (None, None);
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(u) = line.strip_prefix("URL: ") {
                url = Some(u.to_owned());
            } else if let Some(k) = line.strip_prefix("Key: ") {
                key = Some(k.to_owned());
            }
            if url.is_some() && key.is_some() {
                break;
            }
        }
        (url.expect("URL line"), key.expect("Key line"))
    })
    .await
    .unwrap();
    assert!(key.starts_with("dnxsim_") && key.len() > 40, "{key}");
    let addr: SocketAddr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/v1"))
        .unwrap()
        .parse()
        .unwrap();
    let c = Client::new(addr);
    let auth = bearer(&key);
    let r = c
        .send(
            Method::GET,
            &format!("/agents2/{AGENT}"),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("50"));
    assert_eq!(r.json()["id"], AGENT);

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut status = None;
    wait_until("sim stops on SIGTERM", async || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    })
    .await;
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

/// A child process killed when the test ends, whatever happened to it.
pub(crate) struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `demo` with `extra` arguments, on ports of its own: the process, its banner, the API's address
/// and the team key the banner printed.
pub(crate) async fn start_demo(extra: &[&str]) -> (Stopped, String, SocketAddr, String) {
    let mut child = Stopped(
        Command::new(env!("CARGO_BIN_EXE_dialnexa-gateway"))
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Keeps reading after the banner so the audit lines that follow never fill the pipe.
    std::thread::spawn(move || {
        let mut banner = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !banner.ends_with("Ctrl-C stops.\n") {
                banner.push_str(&line);
                banner.push('\n');
                if line.contains("Ctrl-C stops.") {
                    let _ = tx.send(banner.clone());
                }
            }
        }
    });
    let banner = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap()
        .expect("demo printed its banner");
    let api: SocketAddr = banner
        .split("gateway on http://")
        .nth(1)
        .and_then(|rest| rest.split("/v1").next())
        .unwrap()
        .parse()
        .unwrap();
    let team_key = banner
        .split("Team key (made up for this run): ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap()
        .to_owned();
    (child, banner, api, team_key)
}

/// `demo`: the gateway in front of the simulator; its printed commands use the seed's fields, and
/// replayed against it they answer as their comments say.
#[tokio::test]
async fn demo_prints_commands_for_the_seeds_fields_and_they_answer_as_described() {
    let (_demo, banner, api, team_key) = start_demo(&[]).await;
    let team_key = team_key.as_str();
    let pipeline = r#"{"pipeline_type":"Speech_To_Speech"}"#;
    let speech = r#"{"speech":{"backchanneling":true,"responsiveness":0.8}}"#;
    let bad = r#"{"pipeline_type":"Telepathy"}"#;
    for body in [pipeline, speech, bad] {
        assert!(
            banner.contains(&format!("-d '{body}'")),
            "{body} in {banner}"
        );
    }
    let c = Client::new(api);
    let path = format!("/v1/agents2/{AGENT}");
    assert_eq!(c.get(&path, team_key).await.x_cache(), "MISS");
    assert_eq!(c.get(&path, team_key).await.x_cache(), "HIT");
    let switched = c.patch(&path, team_key, pipeline).await;
    assert_eq!(switched.status, 200);
    assert_eq!(switched.json()["pipeline_type"], "Speech_To_Speech");
    let merged = c.patch(&path, team_key, speech).await.json();
    let speech_now = &merged["current_version"]["speech"];
    assert_eq!(speech_now["backchanneling"], true);
    assert_eq!(speech_now["transcriber_id"], "tr0deepnova3xx");
    let refused = c.patch(&path, team_key, bad).await;
    assert_eq!(refused.status, 400);
    assert!(refused.json()["message"][0]
        .as_str()
        .unwrap()
        .starts_with("pipeline_type must be one of"));
    let after = c.get(&path, team_key).await;
    assert_eq!(after.x_cache(), "MISS");
    assert_eq!(after.json(), merged);

    // The org budget's commands: batch floods and is refused past its part, demo is served.
    let batch_key = banner
        .split("Batch team key (made up for this run): ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap();
    assert!(banner.contains("for i in $(seq 30)"), "{banner}");
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = c.get("/v1/calls", batch_key).await;
        if r.status == 429 {
            assert_eq!(r.json()["code"], "org_quota_exhausted");
        }
        statuses.push(r.status);
    }
    let served = statuses.iter().filter(|s| **s == 200).count();
    assert!((5..30).contains(&served), "{statuses:?}");
    assert_eq!(c.get("/v1/calls", team_key).await.status, 200);
}

#[tokio::test]
async fn sim_refuses_an_oversized_body_with_413_and_stops_when_its_handle_drops() {
    let (sim, c) = sim().await;
    let auth = bearer(KEY);
    let huge = Bytes::from(vec![b' '; 2 * 1024 * 1024 + 1]);
    let r = c
        .send(
            Method::POST,
            "/v1/agents2",
            &[("authorization", &auth)],
            huge,
        )
        .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["statusCode"], 413);
    assert_eq!(sim.agent_count(), 3);

    let addr = sim.addr;
    drop(sim);
    wait_until("the simulator stops accepting", async || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
}

// === The gateway's connection limits (DESIGN, "Limits on slow, idle and too many clients") ===

/// A simulator holding clients to short limits, so each can be seen to run out.
async fn limited_sim(max_connections: usize) -> SimHandle {
    let quick = Duration::from_millis(300);
    let limits = ConnectionLimits {
        header_timeout: quick,
        body_timeout: quick,
        idle_timeout: quick,
        max_connections: NonZeroUsize::new(max_connections).unwrap(),
    };
    start(SimOptions::new(KEY).limits(limits)).await
}

fn raw_request(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: sim\r\nAuthorization: Bearer {KEY}\r\n{extra}\r\n")
        .into_bytes()
}

#[test]
fn sim_serves_under_the_gateways_default_connection_limits() {
    let defaults = dialnexa_gateway::config::default_connection_limits();
    assert_eq!(defaults.header_timeout, Duration::from_secs(30));
    assert_eq!(defaults.body_timeout, Duration::from_secs(60));
    assert_eq!(defaults.idle_timeout, Duration::from_secs(75));
    assert_eq!(defaults.max_connections.get(), 16_384);
}

#[tokio::test]
async fn sim_closes_silent_connections_and_answers_a_stalled_head_408_in_dialnexa_shape() {
    let sim = limited_sim(16).await;
    let mut silent = RawConn::open(sim.addr).await;
    let mut half_head = RawConn::open(sim.addr).await;
    half_head
        .send(b"GET /v1/agents2 HTTP/1.1\r\nHost: sim\r\nAuthoriz")
        .await;

    let (closed, sent) = silent.closed().await;
    assert!(closed, "a silent connection stayed open");
    assert!(sent.is_empty(), "a silent client was sent {sent:?}");
    let (closed, sent) = half_head.closed().await;
    assert!(closed, "a stalled head kept its connection");
    let text = String::from_utf8_lossy(&sent);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["statusCode"], 408);
    assert_eq!(body["error"], "Request Timeout");
}

#[tokio::test]
async fn sim_closes_an_idle_keep_alive_connection_and_answers_a_stalled_body_408() {
    let sim = limited_sim(16).await;
    let mut idle = RawConn::open(sim.addr).await;
    idle.send(&raw_request("GET", &format!("/v1/agents2/{AGENT}"), ""))
        .await;
    assert_eq!(idle.answer("GET").await.status, 200);
    let (closed, sent) = idle.closed().await;
    assert!(closed, "an idle keep-alive connection stayed open");
    assert!(sent.is_empty(), "an idle client was sent {sent:?}");

    let mut stalled = RawConn::open(sim.addr).await;
    let head = raw_request(
        "PATCH",
        &format!("/v1/agents2/{AGENT}"),
        "content-type: application/json\r\ncontent-length: 100\r\n",
    );
    stalled.send(&head).await;
    stalled.send(b"{\"pipeline_type\":").await;
    let a = stalled.answer("PATCH").await;
    assert_eq!(a.status, 408, "{}", a.head);
    let body: Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(
        (&body["statusCode"], &body["error"]),
        (&json!(408), &json!("Request Timeout"))
    );
    // Nothing changed.
    let c = Client::new(sim.addr);
    let agent = get(&c, &format!("/v1/agents2/{AGENT}")).await.json();
    assert_eq!(agent["pipeline_type"], "Cascaded");
}

/// A declared 10 GB body is refused on its head, without waiting for (or reading) any of it.
#[tokio::test]
async fn sim_refuses_a_10_gb_content_length_at_once() {
    let sim = limited_sim(16).await;
    let mut c = RawConn::open(sim.addr).await;
    let head = raw_request(
        "POST",
        "/v1/agents2",
        "content-type: application/json\r\ncontent-length: 10000000000\r\n",
    );
    c.send(&head).await;
    let a = c.answer("POST").await;
    assert_eq!(a.status, 413, "{}", a.head);
    assert_eq!(sim.agent_count(), 3);
}

#[tokio::test]
async fn sim_connections_beyond_max_connections_wait_until_one_closes() {
    let sim = limited_sim(2).await;
    let path = format!("/v1/agents2/{AGENT}");
    let first = RawConn::open(sim.addr).await;
    let mut second = RawConn::open(sim.addr).await;
    second.send(&raw_request("GET", &path, "")).await;
    assert_eq!(second.answer("GET").await.status, 200);

    // The kernel completes the third handshake, but the simulator does not take the connection.
    let mut third = RawConn::open(sim.addr).await;
    third.send(&raw_request("GET", &path, "")).await;
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(200), third.stream.peek(&mut byte));
    assert!(
        early.await.is_err(),
        "a third connection was served beyond max_connections = 2"
    );
    drop(first);
    assert_eq!(third.answer("GET").await.status, 200);
}
