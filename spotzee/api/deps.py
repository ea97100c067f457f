"""Annotated dependencies: services, the key kinds each route accepts, the key's project, paging."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from spotzee.api.key_schemes import BearerToken
from spotzee.api.metrics import Metrics
from spotzee.schemas.tenancy_models import ApiKey, KeyKind
from spotzee.services.container import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


ServicesDep = Annotated[Services, Depends(get_services)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def _secret_or_admin(services: ServicesDep, token: BearerToken) -> ApiKey:
    return services.tenancy.authenticate(token, allowed=(KeyKind.secret, KeyKind.admin))


def _secret(services: ServicesDep, token: BearerToken) -> ApiKey:
    return services.tenancy.authenticate(token, allowed=(KeyKind.secret,))


def _admin(services: ServicesDep, token: BearerToken) -> ApiKey:
    return services.tenancy.authenticate(token, allowed=(KeyKind.admin,))


SecretKeyDep = Annotated[ApiKey, Depends(_secret)]
AdminKeyDep = Annotated[ApiKey, Depends(_admin)]
SecretOrAdminKeyDep = Annotated[ApiKey, Depends(_secret_or_admin)]


def project_of(key: ApiKey) -> str:
    """The project of a project key (write or secret); an organisation's admin key has none: ``""``."""
    return key.project


def _project_id(key: SecretKeyDep) -> str:
    return project_of(key)


ProjectId = Annotated[str, Depends(_project_id)]
"""The project of the authenticated secret key. A route that also needs the key (the actor of an
audit row) takes ``SecretKeyDep`` too: FastAPI authenticates once per request."""

Cursor = Annotated[str | None, Query(description="next_cursor of the previous page")]
PageLimit = Annotated[int, Query(ge=1, le=1000)]
