"""Subscription topics admin API (secret key of the project)."""

from __future__ import annotations

from fastapi import Response

from spotzee.api.admin_router import admin_router
from spotzee.api.deps import ProjectId, SecretKeyDep, ServicesDep
from spotzee.api.error_handlers import error_responses
from spotzee.schemas.topic_models import TopicCreate, TopicList, TopicPublic, TopicUpdate

router = admin_router("/api/v1/topics", "topics")


@router.post("", response_model=TopicPublic, status_code=201, responses=error_responses(400, 409, 413, 503))
async def create_topic(body: TopicCreate, key: SecretKeyDep, services: ServicesDep) -> TopicPublic:
    return TopicPublic.from_definition(await services.topics.create(key, body))


@router.get("", response_model=TopicList)
async def list_topics(project_id: ProjectId, services: ServicesDep) -> TopicList:
    """The project's topics, and those whose stored definition can't be read (``quarantined``)."""
    items, quarantined = services.topics.load(project_id)
    return TopicList(items=[TopicPublic.from_definition(t) for t in items], quarantined=quarantined)


@router.get("/{topic_id}", response_model=TopicPublic, responses=error_responses(404, 409))
async def get_topic(topic_id: str, project_id: ProjectId, services: ServicesDep) -> TopicPublic:
    return TopicPublic.from_definition(services.topics.get(project_id, topic_id))


@router.put("/{topic_id}", response_model=TopicPublic, responses=error_responses(400, 404, 409, 413, 503))
async def update_topic(topic_id: str, body: TopicUpdate, key: SecretKeyDep, services: ServicesDep) -> TopicPublic:
    return TopicPublic.from_definition(await services.topics.update(key, topic_id, body))


@router.delete("/{topic_id}", status_code=204, responses=error_responses(404, 409, 503))
async def delete_topic(topic_id: str, key: SecretKeyDep, services: ServicesDep) -> Response:
    await services.topics.delete(key, topic_id)
    return Response(status_code=204)
