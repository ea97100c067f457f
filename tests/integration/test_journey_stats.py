"""``GET /api/v1/journeys/{id}/stats`` on both runtimes: step counts, variant conversions, p-value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from scipy.stats import chi2_contingency

from spotzee.domain.journeys.routing import variant_for
from spotzee.schemas.journey_models import Variant
from tests.integration.test_journeys import publish
from tests.support import Stack, wait_until

VARIANTS = [{"name": "A", "weight": 1, "next": "hold"}, {"name": "B", "weight": 1, "next": "hold"}]
SPLIT_TEST = {
    "name": "Split test",
    "trigger": {"type": "api"},
    "exit_when": [{"type": "event", "event": "account_deleted"}],
    "start": "split",
    "steps": {
        "split": {"type": "experiment", "variants": VARIANTS},
        "hold": {
            "type": "wait_for_event",
            "event": "clicked",
            "within": {"value": 1, "unit": "hour"},
            "yes": "nap",
            "timeout": "done",
        },
        "nap": {"type": "delay", "duration": {"value": 1, "unit": "hour"}, "next": "done"},
        "done": {"type": "exit"},
    },
}


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def counts(step: dict[str, Any]) -> tuple[int, int, int, int]:
    return step["entered"], step["completed"], step["waiting"], step["exited"]


def enter_once_live(stack: Stack, journey_id: str, contact: str) -> None:
    """Enter ``contact`` until its run starts. A Kafka worker learns of a publish through the
    definitions topic, and drops an entry it processes before that (the journey isn't live there
    yet); once one entry has started a run, the worker knows the journey is live. ``reentry``
    ``never`` keeps the contact to one run."""
    attempts = [0]

    def started() -> bool:
        attempts[0] += 1
        url = f"/api/v1/journeys/{journey_id}/enter"
        stack.project.post(url, json={"ids": [contact], "idempotency_key": f"probe-{attempts[0]}"})
        stack.settle()
        reached: int = stack.project.get(f"/api/v1/journeys/{journey_id}/stats").json()["steps"]["split"]["runs"]
        return reached == 1

    wait_until(started, timeout=60, interval=0.2)


def test_step_counts_variant_conversions_and_p_value(stack: Stack) -> None:
    journey_id = publish(stack, SPLIT_TEST)
    project, ingest = stack.project, stack.ingest
    # Variants are a hash of (journey, step, contact): pick 12 contacts the split sends to A, 8 to B.
    variants = [Variant.model_validate(v) for v in VARIANTS]
    a: list[str] = []
    b: list[str] = []
    for i in range(1000):
        drawn = a if variant_for(journey_id, "split", f"c{i:03d}", variants).name == "A" else b
        drawn.append(f"c{i:03d}")
    a, b = a[:12], b[:8]
    contacts = sorted(a + b)
    enter_once_live(stack, journey_id, a[0])
    entered = project.post(f"/api/v1/journeys/{journey_id}/enter", json={"ids": contacts, "idempotency_key": "k"})
    assert entered.status_code == 202, entered.text
    stack.settle()  # every run has its variant and waits at `hold`: goal events come after the assignment

    clickers = [*a[:2], b[0]]  # move on to `nap`, a delay of an hour: waiting there
    leaver = b[-1]  # exit_when: the run ends at `hold`
    for contact in clickers:
        ingest.post("/v1/track", json={"userId": contact, "event": "clicked"})
    ingest.post("/v1/track", json={"userId": leaver, "event": "account_deleted"})
    # Goal events: A converts 3 (a[0] twice, counted once), B 1 within a week + 1 ten days later;
    # b[1] purchased only before its assignment, and the other project's b[3] doesn't count here.
    now = datetime.now(UTC)
    for contact in [a[0], a[0], a[1], a[2], b[0]]:
        assert ingest.post("/v1/track", json={"userId": contact, "event": "purchased"}).status_code == 200
    ingest.post("/v1/track", json={"userId": b[1], "event": "purchased", "timestamp": iso(now - timedelta(days=1))})
    ingest.post("/v1/track", json={"userId": b[2], "event": "purchased", "timestamp": iso(now + timedelta(days=10))})
    second = stack.admin.post("/api/v1/projects", json={"name": "Second"}).json()
    other_ingest = stack.client(second["write_key"]["key"], basic=True)
    for contact in contacts:
        assert other_ingest.post("/v1/track", json={"userId": contact, "event": "purchased"}).status_code == 200
    stack.settle()

    def stats(**params: Any) -> dict[str, Any]:
        response = project.get(f"/api/v1/journeys/{journey_id}/stats", params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    wait_until(lambda: stats()["steps"]["nap"]["entered"] == 3 and stats()["steps"]["hold"]["exited"] == 1)
    body = stats(goal="purchased")
    assert (body["journey_id"], body["version"], body["status"]) == (journey_id, 1, "live")
    steps = body["steps"]
    assert list(steps) == ["split", "hold", "nap", "done"]
    assert counts(steps["split"]) == (20, 20, 0, 0)
    assert counts(steps["hold"]) == (20, 4, 16, 1)  # 3 clicked, 1 left; 16 on their timers
    assert counts(steps["nap"]) == (3, 0, 3, 0)  # on the delay's timer
    assert counts(steps["done"]) == (0, 0, 0, 0)
    assert steps["split"]["next"] == {"hold": 20}
    assert steps["hold"]["next"] == {"nap": 3}
    assert (steps["split"]["type"], steps["split"]["runs"], steps["split"]["contacts"]) == ("experiment", 20, 20)
    assert steps["nap"]["type"] == "delay"

    experiment = body["experiments"]["split"]
    assert experiment["goal"] == "purchased"
    assert experiment["within"] is None
    got = [(v["name"], v["contacts"], v["conversions"]) for v in experiment["variants"]]
    assert got == [("A", len(a), 3), ("B", len(b), 2)]
    assert experiment["variants"][0]["rate"] == pytest.approx(3 / len(a))
    expected = chi2_contingency([[3, len(a) - 3], [2, len(b) - 2]], correction=False)
    assert experiment["chi_squared"] == pytest.approx(float(expected.statistic))
    assert experiment["p_value"] == pytest.approx(float(expected.pvalue))
    assert experiment["dof"] == 1
    assert experiment["significant"] == (float(expected.pvalue) < 0.05)
    assert experiment["reason"] is None

    weekly = stats(goal="purchased", within="7d", alpha=0.5)["experiments"]["split"]  # b[2]'s is 10 days late
    assert [(v["name"], v["conversions"]) for v in weekly["variants"]] == [("A", 3), ("B", 1)]
    expected = chi2_contingency([[3, len(a) - 3], [1, len(b) - 1]], correction=False)
    assert weekly["p_value"] == pytest.approx(float(expected.pvalue))
    assert (weekly["within"], weekly["alpha"]) == ("7d", 0.5)
    assert weekly["significant"] == (float(expected.pvalue) < 0.5)

    plain = stats()["experiments"]["split"]  # no goal: who got which variant, no test
    assert [(v["contacts"], v["conversions"], v["rate"]) for v in plain["variants"]] == [
        (len(a), None, None),
        (len(b), None, None),
    ]
    assert plain["p_value"] is None
    assert plain["reason"].startswith("no goal")
    nobody = stats(goal="never_happens")["experiments"]["split"]
    assert (nobody["p_value"], nobody["reason"]) == (None, "no contact converted")

    # Another project's key can't see this journey; its own journeys' stats are its own.
    other = stack.client(second["secret_key"]["key"])
    hidden = other.get(f"/api/v1/journeys/{journey_id}/stats")
    assert hidden.status_code == 404
    assert hidden.json()["error"]["code"] == "not_found"


def test_a_journey_nobody_entered_and_bad_parameters(stack: Stack) -> None:
    created = stack.project.post("/api/v1/journeys", json=SPLIT_TEST)
    assert created.status_code == 201, created.text
    journey_id = created.json()["id"]
    response = stack.project.get(f"/api/v1/journeys/{journey_id}/stats", params={"goal": "purchased"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["version"], body["status"]) == (1, "draft")
    assert all(counts(step) == (0, 0, 0, 0) for step in body["steps"].values())
    experiment = body["experiments"]["split"]
    assert [(v["name"], v["contacts"], v["conversions"], v["rate"]) for v in experiment["variants"]] == [
        ("A", 0, 0, None),
        ("B", 0, 0, None),
    ]
    assert (experiment["p_value"], experiment["reason"]) == (None, "variant 'A' has no contacts")

    missing = stack.project.get("/api/v1/journeys/jrn_0000000000000000/stats")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    for params, path in [
        ({"within": "7x"}, "within"),
        ({"within": "0d"}, "within"),
        ({"alpha": "2"}, "alpha"),
        ({"alpha": "x"}, "alpha"),
        ({"goal": ""}, "goal"),
    ]:
        bad = stack.project.get(f"/api/v1/journeys/{journey_id}/stats", params=params)
        assert bad.status_code == 400, (params, bad.text)
        error = bad.json()["error"]
        assert error["code"] == "invalid_input"
        assert error["details"][0]["path"] == path, error
    assert stack.ingest.get(f"/api/v1/journeys/{journey_id}/stats").status_code == 401  # a write key
