"""The official segment-analytics-python client, pointed at Spotzee, just works."""

from __future__ import annotations

from datetime import UTC, datetime

from segment.analytics.client import Client

from tests.support import Stack

USERS = 25
EVENTS_PER_USER = 8


def test_segment_client_events_land_in_clickhouse_exactly_once(stack: Stack) -> None:
    errors: list[Exception] = []
    client = Client(
        write_key=stack.keys.write_key,
        host=stack.base_url,
        gzip=True,
        upload_size=50,
        on_error=lambda error, _batch: errors.append(error),
        max_retries=2,
    )
    for u in range(USERS):
        user = f"user-{u}"
        client.identify(
            user, {"email": f"{user}@example.com", "plan": "free" if u % 2 else "pro"}, anonymous_id=f"anon-{u}"
        )
        for i in range(EVENTS_PER_USER):
            client.track(
                user, "purchase" if i % 2 else "view", {"amount": i, "sku": f"sku-{i}"}, timestamp=datetime.now(UTC)
            )
        client.page(user, category="docs", name="Intro", properties={"url": "https://example.com/intro"})
        client.screen(user, name="Home")
        client.group(user, f"team-{u % 3}", {"size": u})
    client.alias("user-0", "user-0-renamed")
    client.flush()
    client.join()
    assert errors == []
    expected = USERS * (EVENTS_PER_USER + 4) + 1
    stack.settle()
    assert stack.scalar("SELECT count() FROM events") == expected
    assert stack.scalar("SELECT uniqExact(message_id) FROM events") == expected
    assert stack.sql("SELECT event_type, count() FROM events GROUP BY event_type ORDER BY event_type") == [
        ["alias", 1],
        ["group", USERS],
        ["identify", USERS],
        ["page", USERS],
        ["screen", USERS],
        ["track", USERS * EVENTS_PER_USER],
    ]
    library = stack.scalar("SELECT DISTINCT JSONExtractString(context, 'library', 'name') FROM events")
    assert library == "analytics-python"
    contact = stack.project.get("/api/v1/contacts/user-3").json()
    assert contact["email"] == "user-3@example.com"
    assert contact["events"]["purchase"]["count"] == EVENTS_PER_USER // 2
    assert contact["anonymous_ids"] == ["anon-3"]
    assert "user-0" in stack.project.get("/api/v1/contacts/user-0-renamed").json()["anonymous_ids"]
