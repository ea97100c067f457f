"""Issue 9, class 4: one tenant's Liquid can't stall the API or eat the host.

Expressions are bounded inside (ranges, filter results, integers), template sources are limited
before parsing, and parsing and rendering run in worker processes killed at a hard deadline, so
another project's ingestion and ``/health`` answer while a hostile preview runs.
"""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
from typing import Any

import httpx
import pytest

from spotzee.domain.templates import DEFAULT_LIMITS, TemplateRenderError, render_string
from spotzee.schemas.template_models import MAX_MARKUP, MAX_SOURCE_BYTES
from spotzee.services.template_workers import TemplateWorkers
from spotzee.streams.journey_processor import _render as journey_render
from tests.support import Stack

BOMB = "{{ (1..30000000) | join: ',' | size }}"

BOMBS = {
    "range join": BOMB,
    "range written out": "{{ (1..30000000) }}",
    "range reversed in a loop": "{% for i in (1..30000000) reversed %}{% endfor %}",
    "range sorted": "{{ (1..5000000) | sort | size }}",
    "append chain": "{% assign x = (1..10000) | join: 'xxxx' %}{{ x | append: x | append: x | append: x | append: x "
    "| append: x | append: x | append: x | append: x | append: x | append: x | append: x | append: x | size }}",
    "replace amplification": "{% assign s = (1..10000) | join: 'a' %}{% assign t = (1..5000) | join: 'bbbbbbbbbb' %}"
    "{{ s | replace: 'a', t | size }}",
    "split of a large string": "{% assign s = (1..10000) | join: ',' %}"
    "{{ s | append: s | append: s | append: s | append: s | split: '' | size }}",
    "nested loops": "{% for a in (1..10000) %}{% for b in (1..10000) %}{% endfor %}{% endfor %}",
    "capture doubling": "{% capture x %}xxxxxxxxxxxxxxxx{% endcapture %}"
    "{% for i in (1..10000) %}{% capture x %}{{x}}{{x}}{% endcapture %}{% endfor %}{{ x | size }}",
    "times squaring": "{% assign x = 99999999 %}{% for i in (1..64) %}{% assign x = x | times: x %}{% endfor %}{{ x }}",
    "concat doubling": "{% assign l = 'a,b' | split: ',' %}"
    "{% for i in (1..64) %}{% assign l = l | concat: l %}{% endfor %}{{ l | size }}",
    "deep if nesting": "{% if a %}" * 60 + "x" + "{% endif %}" * 60,
}


@pytest.mark.parametrize("source", list(BOMBS.values()), ids=list(BOMBS))
def test_expression_bombs_are_refused_quickly_without_allocating(source: str) -> None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(TemplateRenderError) as caught:
            render_string(source, {}, field="content.html")
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.field == "content.html"
    assert caught.value.reason  # says which limit
    assert elapsed < 0.5, f"took {elapsed:.2f}s"
    # No value larger than a few times the output limit is ever built.
    assert peak < 8 * DEFAULT_LIMITS.max_output_bytes, f"peak {peak} bytes"


def test_the_range_join_bomb_names_the_range_limit() -> None:
    with pytest.raises(TemplateRenderError, match="range with more than 10000 items"):
        render_string(BOMB, {})


def test_ordinary_templates_within_the_bounds_still_render() -> None:
    assert render_string("{{ (1..10000) | join: ',' | size }}", {}) == "48893"
    assert render_string("{{ 'a,b,c' | split: ',' | reverse | join: '-' }}", {}) == "c-b-a"
    assert render_string("{{ 'hello' | replace: 'l', 'LL' | append: '!' }}", {}) == "heLLLLo!"
    assert render_string("{{ 12345678 | times: 87654321 }}", {}) == str(12345678 * 87654321)
    looped = "{% for i in (1..3) %}{{ i }}{% endfor %}{% capture c %}[{{ 'x' | prepend: 'y' }}]{% endcapture %}{{ c }}"
    assert render_string(looped, {}) == "123[yx]"


def test_journey_update_values_render_with_the_same_bounds() -> None:
    """``update``/``event`` steps render through ``streams.journeys._render``: a bomb is refused
    at once (the value stays as written) instead of running for seconds in the processor."""
    started = time.monotonic()
    assert journey_render(BOMB, {"contact": {}, "journey": {}}) == BOMB
    assert time.monotonic() - started < 0.5
    assert journey_render("{{ contact.plan | upcase }}", {"contact": {"plan": "pro"}}) == "PRO"


def test_oversized_sources_are_refused_before_parsing_at_render_time() -> None:
    started = time.monotonic()
    with pytest.raises(TemplateRenderError, match=f"larger than {MAX_SOURCE_BYTES} bytes"):
        render_string("{{a}}" * 199_000, {}, field="content.text")
    with pytest.raises(TemplateRenderError, match=f"more than {MAX_MARKUP} Liquid tags"):
        render_string("{{a}}" * (MAX_MARKUP + 1), {})
    assert time.monotonic() - started < 0.2  # parsing 199,000 outputs alone takes seconds


def test_a_job_that_ignores_the_deadline_is_killed_and_the_pool_carries_on() -> None:
    async def run() -> None:
        workers = TemplateWorkers(1, 0.5)
        try:
            assert await workers.call(render_string, "{{ a }}!", {"a": 1}) == "1!"
            started = time.monotonic()
            with pytest.raises(TemplateRenderError, match=r"longer than 0\.5s"):
                await workers.call(time.sleep, 30)  # stands for a render stuck in one call
            assert time.monotonic() - started < 2
            assert workers.killed == 1
            assert await workers.call(render_string, "{{ a }}?", {"a": 2}) == "2?"  # a fresh worker
        finally:
            workers.close()

    asyncio.run(run())


# -- through the API -------------------------------------------------------------------------------

EMAIL: dict[str, Any] = {
    "name": "Hostile",
    "channel": "email",
    "content": {"subject": "Hi", "html": "<p>hi</p>", "from": "team@example.com"},
}
# Within every bound, but each iteration is real work: it runs into the render deadline.
SLOW = (
    "{% assign s = (1..10000) | join: 'aaaaaaaaaaaaaaaaaaaa' %}"
    "{% for i in (1..10000) %}{% assign t = s | replace: 'a', 'b' | upcase | downcase %}{% endfor %}{{ t | size }}"
)


def _with_html(html: str) -> dict[str, Any]:
    return {**EMAIL, "content": {**EMAIL["content"], "html": html}}


@pytest.mark.runtimes("embedded")
def test_a_huge_template_source_is_a_400_with_its_path_and_nothing_stalls(stack: Stack) -> None:
    project = stack.project
    for html, reason in (
        ("{{a}}" * 199_000, "larger than"),
        ("{{a}}" * (MAX_MARKUP + 1), f"more than {MAX_MARKUP} Liquid tags"),
    ):
        started = time.monotonic()
        refused = project.post("/api/v1/templates", json=_with_html(html))
        assert refused.status_code == 400, refused.text
        assert time.monotonic() - started < 1.0
        details = refused.json()["error"]["details"]
        assert any(d["path"] == "content.html" and reason in d["reason"] for d in details), details
    assert project.get("/api/v1/templates").json()["items"] == []  # nothing stored
    # Syntax is still checked (in a worker): 400 with the field, the line and nothing stored.
    bad = project.post("/api/v1/templates", json=_with_html("<p>ok</p>\n{% if %}"))
    assert bad.status_code == 400, bad.text
    assert any(d["path"] == "content.html" and "line 2" in d["reason"] for d in bad.json()["error"]["details"])
    assert project.get("/api/v1/templates").json()["items"] == []


@pytest.mark.runtimes("embedded")
def test_hostile_previews_do_not_stall_another_projects_requests(stack: Stack) -> None:
    project = stack.project
    assert stack.ingest.post("/v1/identify", json={"userId": "u1", "traits": {}}).status_code == 200
    stack.settle()
    bomb = project.post("/api/v1/templates", json=_with_html(BOMB))
    slow = project.post("/api/v1/templates", json=_with_html(SLOW))
    assert bomb.status_code == 201, bomb.text
    assert slow.status_code == 201, slow.text

    refused = project.post(f"/api/v1/templates/{bomb.json()['id']}/preview", json={"contact_id": "u1"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["details"][0]["path"] == "content.html"
    assert "range with more than" in refused.json()["error"]["details"][0]["reason"]

    created = stack.admin.post("/api/v1/projects", json={"name": "Bystander"})
    assert created.status_code == 201, created.text
    bystander = created.json()["write_key"]["key"]

    answers: list[httpx.Response] = []

    def hostile() -> None:
        with stack.client(stack.keys.secret_key) as client:
            answers.append(client.post(f"/api/v1/templates/{slow.json()['id']}/preview", json={"contact_id": "u1"}))

    attackers = [threading.Thread(target=hostile) for _ in range(3)]
    for thread in attackers:
        thread.start()
    time.sleep(0.3)  # the previews are running
    latencies: list[float] = []
    with stack.client() as health, stack.client(bystander, basic=True) as ingest:
        while any(thread.is_alive() for thread in attackers):
            started = time.monotonic()
            assert health.get("/health").status_code == 200
            tracked = ingest.post("/v1/track", json={"userId": "b1", "event": "Ping"})
            assert tracked.status_code == 200, tracked.text
            latencies.append(time.monotonic() - started)
            time.sleep(0.05)
    for thread in attackers:
        thread.join()
    assert len(latencies) >= 3, "the hostile previews ended too soon to measure anything"
    assert max(latencies) < 1.0, latencies
    assert [a.status_code for a in answers] == [400, 400, 400], [a.text for a in answers]
    for answer in answers:
        reason = answer.json()["error"]["details"][0]["reason"]
        assert "took longer than" in reason, reason
