"""The fuzzing of ``test_fuzz.py``, run in a process of its own: schemathesis and
hypothesis against the gateway the test runs, answering with what they found.

In the test's own process the fuzzer ran in a thread beside the gateway's event loop,
and CPython 3.11 keeps one recursion count for building syntax trees per interpreter:
hypothesis parsing a lambda's source there while another thread built a tree failed
the test with "AST constructor recursion depth mismatch". Here the two do not share an
interpreter (and use both cores).

    python fuzzer.py RESULT_FILE < {"document": …, "base_url": …, "token": …}
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Flaky
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.generation.hypothesis.builder import (
    HypothesisTestConfig,
    HypothesisTestMode,
    create_test,
)
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("AETHER_FUZZ_EXAMPLES", "25"))

settings.register_profile(
    "gateway-fuzz",
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    # No shrinking: a failure is reported with the request that caused it, and
    # shrinking would replay dozens of requests against a live server.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
PROFILE = settings.get_profile("gateway-fuzz")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# The admin token, given by the test (``main``).
AUTH: dict[str, str] = {}
# One session for every call, as each call's own would be but cheaper: one kept
# connection, no proxy settings read from the environment at each call (the gateway is
# local), and no cookie carried from one call to the next.
SESSION = requests.Session()
SESSION.trust_env = False
SESSION.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
_VALID_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


def headers_for(case: Any) -> dict[str, str]:
    """The admin token, and a valid generated Idempotency-Key made unique to the case:
    generated keys are short and collide, and a key already used with another request
    is (rightly) a 422, which would hide the route behind it."""
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and _VALID_KEY.match(key):
        return {**AUTH, "Idempotency-Key": f"{key}-{uuid.uuid4().hex}"}
    return AUTH


_MISSION = {"mission_id": "$response.body#/mission_id"}
_MISSION_LINKS = {
    "MissionsMissionIdGetMission": _MISSION,
    "MissionsMissionIdUsageMissionUsage": _MISSION,
    "MissionsMissionIdPausePauseMission": _MISSION,
    "MissionsMissionIdResumeResumeMission": _MISSION,
    "MissionsMissionIdCancelCancelMission": _MISSION,
    "MissionsMissionIdBudgetRaiseBudget": _MISSION,
    "MissionsMissionIdMessagesPostMessage": _MISSION,
    "MissionsMissionIdPlanApproveApprovePlan": _MISSION,
    "MissionsMissionIdTasksTaskIdRetryRetryTask": _MISSION,
    "TasksListTasks": {"query.mission_id": "$response.body#/mission_id"},
    "EventsListEvents": {"query.mission_id": "$response.body#/mission_id"},
}
# Source operation and status → the operations its answer links to, with parameters.
LINKS: dict[tuple[str, str, str], dict[str, dict[str, str]]] = {
    ("/missions", "post", "202"): _MISSION_LINKS,
    ("/missions/{mission_id}/pause", "post", "202"): _MISSION_LINKS,
    ("/missions/{mission_id}/resume", "post", "202"): _MISSION_LINKS,
    ("/admin/tokens", "post", "201"): {
        "AdminTokensTokenIdRevokeToken": {"token_id": "$response.body#/id"}
    },
}
# Event streams never end by themselves: they are tested in test_sse.py.
STREAMS = {"/missions/{mission_id}/events", "/events/stream"}


def with_links(document: dict[str, Any]) -> dict[str, Any]:
    for (path, method, status), targets in LINKS.items():
        response = document["paths"][path][method]["responses"][status]
        response["links"] = {
            f"To{operation_id}": {"operationId": operation_id, "parameters": parameters}
            for operation_id, parameters in targets.items()
        }
    for path in STREAMS:
        del document["paths"][path]
    return document


@dataclass
class Tally:
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    # Answers in the stateful run, by operation and status.
    stateful: dict[tuple[str, int], int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    flaky_replays: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: int, stateful_label: str | None = None) -> None:
        with self.lock:
            self.cases += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if stateful_label is not None:
                key = (stateful_label, status)
                self.stateful[key] = self.stateful.get(key, 0) + 1


def fuzz(document: dict[str, Any], base_url: str) -> Tally:
    """Every operation with coverage cases and random valid and invalid input, then the
    stateful run."""
    schema = schemathesis.openapi.from_dict(document)
    tally = Tally()

    for result in schema.get_all_operations():
        operation = result.ok()

        def one(case: Any) -> None:
            headers = headers_for(case)
            response = case.call(base_url=base_url, session=SESSION, headers=headers, timeout=30)
            tally.count(response.status_code)
            case.validate_response(response, checks=CHECKS, headers=headers)

        # What schemathesis's pytest plugin builds for one operation: its coverage cases
        # (boundaries, wrong types, missing and unexpected parameters) and then valid
        # and invalid random cases, on the profile's settings.
        test = create_test(
            operation=operation,
            test_func=one,
            config=HypothesisTestConfig(
                project=schema.config,
                modes=[HypothesisTestMode.COVERAGE, HypothesisTestMode.FUZZING],
                settings=PROFILE,
            ),
        )
        try:
            test()
        except Exception as error:
            tally.failures.append(f"{operation.label}: {error}")

    # Sequences of valid calls: invalid input was each operation's business above (and
    # NUL, which no text field takes, is one).
    schema.config.generation.update(modes=[GenerationMode.POSITIVE], allow_x00=False)

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {
                "base_url": base_url,
                "session": SESSION,
                "headers": headers_for(case),
                "timeout": 30,
            }

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            tally.count(response.status_code, case.operation.label)

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as error:
                # Recorded here: hypothesis may replay the scenario against a server
                # whose state has moved on, and report only that the replay differed.
                tally.failures.append(f"stateful, {case.operation.label}: {error}")
                raise

    try:
        run_state_machine_as_test(
            Machine,
            settings=settings(PROFILE, max_examples=EXAMPLES * 4, stateful_step_count=8),
        )
    except Flaky:
        # A scenario replayed against a server whose state has moved on draws differently
        # (a link that resolved before may not now). Check failures were recorded above
        # when they happened; as schemathesis's own runner does, the replay's difference
        # alone is not one. The run stops there, having run the scenarios before it.
        tally.flaky_replays += 1
    except Exception as error:
        tally.failures.append(f"stateful: {error}")
    return tally


def main() -> int:
    """Read the document, the gateway's URL and the token on stdin; write the tally as
    JSON to the file named by the first argument."""
    given = json.load(sys.stdin)
    AUTH["Authorization"] = f"Bearer {given['token']}"
    tally = fuzz(with_links(given["document"]), given["base_url"])
    result = {
        "cases": tally.cases,
        "statuses": sorted(tally.statuses.items()),
        "stateful": [[label, status, n] for (label, status), n in tally.stateful.items()],
        "failures": tally.failures,
        "flaky_replays": tally.flaky_replays,
    }
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
