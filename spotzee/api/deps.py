"""Annotated dependencies: services, and the key kinds each route accepts."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Depends, Request

from spotzee.api.metrics import Metrics
from spotzee.errors import Unauthorized
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


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send the key as 'Authorization: Bearer <key>'")
    return token.strip()


def basic_username(request: Request) -> str | None:
    """Segment's write key: the HTTP Basic username (password empty)."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, ValueError):  # ValueError: non-ASCII; UnicodeDecodeError is one too
        raise Unauthorized("malformed Basic authorization header") from None
    return decoded.partition(":")[0]


def _secret_or_admin(request: Request, services: ServicesDep) -> ApiKey:
    return services.tenancy.authenticate(bearer_token(request), allowed=(KeyKind.secret, KeyKind.admin))


def _secret(request: Request, services: ServicesDep) -> ApiKey:
    return services.tenancy.authenticate(bearer_token(request), allowed=(KeyKind.secret,))


def _admin(request: Request, services: ServicesDep) -> ApiKey:
    return services.tenancy.authenticate(bearer_token(request), allowed=(KeyKind.admin,))


SecretKeyDep = Annotated[ApiKey, Depends(_secret)]
AdminKeyDep = Annotated[ApiKey, Depends(_admin)]
SecretOrAdminKeyDep = Annotated[ApiKey, Depends(_secret_or_admin)]
