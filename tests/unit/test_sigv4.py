"""AWS Signature Version 4 (``spotzee.providers.sigv4``) against AWS's published test suite
(aws-sig-v4-test-suite: example key ``AKIDEXAMPLE``, region us-east-1, service ``service``,
2015-08-30T12:36:00Z), and the loopback SES server's check of it from the other side."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from spotzee.providers.sigv4 import (
    Credentials,
    amz_date,
    canonical_request,
    sign,
    signing_key,
    string_to_sign,
)
from tests.vendors.http_vendor import Received
from tests.vendors.ses_server import SesServer

SUITE = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
AT = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
SCOPE = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"


@pytest.mark.parametrize(
    ("name", "method", "url", "headers", "body", "signed", "expected"),
    [
        (
            "get-vanilla",
            "GET",
            "https://example.amazonaws.com/",
            {},
            b"",
            "host;x-amz-date",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "post-vanilla",
            "POST",
            "https://example.amazonaws.com/",
            {},
            b"",
            "host;x-amz-date",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        (
            "get-vanilla-query-order-key-case",
            "GET",
            "https://example.amazonaws.com/?Param2=value2&Param1=value1",
            {},
            b"",
            "host;x-amz-date",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        (
            "post-x-www-form-urlencoded",
            "POST",
            "https://example.amazonaws.com/",
            {"Content-Type": "application/x-www-form-urlencoded"},
            b"Param1=value1",
            "content-type;host;x-amz-date",
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        ),
    ],
)
def test_the_published_test_vectors(
    name: str, method: str, url: str, headers: dict[str, str], body: bytes, signed: str, expected: str
) -> None:
    result = sign(
        SUITE,
        method,
        url,
        {"Host": "example.amazonaws.com", **headers},
        body,
        region="us-east-1",
        service="service",
        now=AT,
    )
    assert result["X-Amz-Date"] == "20150830T123600Z"
    assert result["Authorization"] == (
        f"AWS4-HMAC-SHA256 Credential={SCOPE}, SignedHeaders={signed}, Signature={expected}"
    ), name


def test_get_vanilla_intermediate_steps() -> None:
    """The suite's canonical request and string to sign for get-vanilla, step by step."""
    headers = {"Host": "example.amazonaws.com", "X-Amz-Date": "20150830T123600Z"}
    request, signed = canonical_request("GET", "https://example.amazonaws.com/", headers, b"")
    assert request == (
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert signed == "host;x-amz-date"
    assert string_to_sign("20150830T123600Z", "20150830/us-east-1/service/aws4_request", request) == (
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
        "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    )
    assert len(signing_key(SUITE.secret_access_key, "20150830", "us-east-1", "service")) == 32
    assert amz_date(datetime(2015, 8, 30, 14, 36, tzinfo=UTC).astimezone()) == "20150830T143600Z"


def _ses_request(credentials: Credentials, body: bytes, *, now: datetime, region: str = "eu-west-1") -> Received:
    headers = sign(
        credentials,
        "POST",
        "http://127.0.0.1:9/v2/email/outbound-emails",
        {"Host": "127.0.0.1:9", "Content-Type": "application/json"},
        body,
        region=region,
        service="ses",
        now=now,
    )
    return Received("POST", "/v2/email/outbound-emails", {k.lower(): v for k, v in headers.items()}, body, 1)


def test_the_ses_server_verifies_signatures_and_refuses_wrong_ones() -> None:
    server = SesServer("AKIAIOSFODNN7EXAMPLE", "right-secret", region="eu-west-1")
    good = Credentials("AKIAIOSFODNN7EXAMPLE", "right-secret")
    now = datetime.now(UTC)
    assert server.authenticate(_ses_request(good, b"{}", now=now)) is None
    wrong = server.authenticate(_ses_request(Credentials("AKIAIOSFODNN7EXAMPLE", "wrong-secret"), b"{}", now=now))
    assert wrong is not None
    assert (wrong.status, wrong.headers["x-amzn-ErrorType"].split(":")[0]) == (403, "SignatureDoesNotMatch")
    # The body is signed: the same headers over another body do not verify.
    tampered = _ses_request(good, b"{}", now=now)
    tampered.body = b'{"x": 1}'
    refused = server.authenticate(tampered)
    assert refused is not None
    assert refused.headers["x-amzn-ErrorType"].startswith("SignatureDoesNotMatch")
    other_region = server.authenticate(_ses_request(good, b"{}", now=now, region="us-east-1"))
    assert other_region is not None
    assert other_region.status == 403
    stale = server.authenticate(_ses_request(good, b"{}", now=datetime(2015, 8, 30, tzinfo=UTC)))
    assert stale is not None
    assert stale.body == {"message": "Signature expired"}
    unknown = server.authenticate(_ses_request(Credentials("AKIAUNKNOWNKEY000000", "x"), b"{}", now=now))
    assert unknown is not None
    assert unknown.headers["x-amzn-ErrorType"].startswith("UnrecognizedClientException")
