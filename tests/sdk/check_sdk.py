"""The official DialNexa Python SDK's calls against a simulated DialNexa (or the gateway in front of one).

Run by tests/sdk/run.sh:  DIALNEXA_API_KEY=<key> python check_sdk.py --base-url http://127.0.0.1:PORT [--through-gateway]

The SDK has no base-URL option; the README's one-line patch of `dialnexa.client.DEFAULT_BASE_URL` is
what a service does, so it is what this does. Exits 1 with the failed check named.
"""
import argparse
import contextlib
import io
import sys

import dialnexa.client

AGENT = "agt_abc123"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--through-gateway", action="store_true")
    args = parser.parse_args()

    dialnexa.client.DEFAULT_BASE_URL = args.base_url  # the one-line patch
    from dialnexa import NexaClient
    from dialnexa.http import HttpError

    client = NexaClient()  # the key comes from DIALNEXA_API_KEY
    where = "through the gateway" if args.through_gateway else "against sim"

    def quiet(call, *a, **kw):
        # The SDK prints every answer it parses; keep the check's output to its verdicts.
        with contextlib.redirect_stdout(io.StringIO()):
            return call(*a, **kw)

    def check(what, ok, detail=""):
        if not ok:
            print(f"FAIL ({where}): {what} {detail}")
            sys.exit(1)
        print(f"ok ({where}): {what}")

    listed = quiet(client.agents.list)
    ids = [a.get("id") for a in listed.get("data", [])]
    check("agents.list() lists the seeded agents", AGENT in ids and listed.get("total") == len(ids), ids)
    pipelines = {a.get("pipeline_type") for a in listed["data"]}
    check("both pipeline types are seeded", {"Cascaded", "Speech_To_Speech"} <= pipelines, pipelines)

    agent = quiet(client.agents.get, AGENT)
    version = agent.get("current_version", {})
    check("agents.get() answers the GET page's shape",
          agent.get("id") == AGENT and "organization_id" in agent and "speech" in version
          and version.get("agent_id") == AGENT, sorted(agent))

    # Flip values, so the check holds however often it runs against the same simulator.
    backchanneling = not version["speech"]["backchanneling"]
    pipeline = "Cascaded" if agent["pipeline_type"] == "Speech_To_Speech" else "Speech_To_Speech"
    updated = quiet(client.agents.update, AGENT,
                    {"pipeline_type": pipeline, "speech": {"backchanneling": backchanneling}})
    check("agents.update() answers the updated agent",
          updated["pipeline_type"] == pipeline
          and updated["current_version"]["speech"]["backchanneling"] == backchanneling
          and updated["current_version"]["speech"]["transcriber_id"] == version["speech"]["transcriber_id"])
    again = quiet(client.agents.get, AGENT)
    check("agents.get() after the update shows it", again == updated)

    try:
        quiet(client.agents.update, AGENT, {"pipeline_type": "Telepathy"})
        check("a bad pipeline_type is refused", False)
    except HttpError as err:
        message = (err.data or {}).get("message", [])
        check("a bad pipeline_type is a 400 naming the field",
              err.status_code == 400 and any("pipeline_type" in m for m in message), err)
    check("and changes nothing", quiet(client.agents.get, AGENT) == updated)

    calls = quiet(client.calls.list)
    check("calls.list() answers a page of calls",
          isinstance(calls.get("data"), list) and calls.get("page") == 1 and calls.get("limit") == 30, calls)
    check("languages.list()", any(l["id"] == "lang_en_us" for l in quiet(client.languages.list)["data"]))
    check("llms.list()", any(l["id"] == "llm_gpt4o" for l in quiet(client.llms.list)))
    check("voices.list()", len(quiet(client.voices.list, limit=2)["data"]) == 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
