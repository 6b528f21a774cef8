"""The HS256 check of client tokens agrees with PyJWT's, token by token.

``TokenVerifier`` checks HS256 signatures itself (one HMAC from a keyed state
made once); PyJWT still checks every other algorithm. Whatever PyJWT signs with
the key is accepted with the same claims, and a token signed with another key or
algorithm, or altered anywhere, is refused as PyJWT would refuse it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushsvc.auth import TokenVerifier
from pushsvc.errors import Unauthenticated

# Short keys are what the properties try; PyJWT warns of them on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key is")
NOW = time.time()
users = st.text(
    alphabet=st.characters(
        min_codepoint=0x21, max_codepoint=0x2FFF, categories=("L", "N", "P", "S")
    ),
    min_size=1,
    max_size=40,
)
secrets_ = st.text(min_size=1, max_size=64).filter(lambda s: "-----BEGIN" not in s)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _sign(secret: str, head: str, body: str) -> str:
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


@settings(max_examples=200, deadline=None)
@given(secret=secrets_, user=users, ttl=st.integers(60, 86_400), topics=st.lists(users, max_size=3))
def test_what_pyjwt_signs_is_accepted_with_its_claims(
    secret: str, user: str, ttl: int, topics: list[str]
) -> None:
    claims = {"sub": user, "iat": int(NOW), "exp": int(NOW) + ttl, "topics": topics}
    token = jwt.encode(claims, secret, algorithm="HS256")
    identity = TokenVerifier("HS256", secret).verify(token, now=NOW)
    assert (identity.user_id, identity.expires_at, list(identity.topics)) == (
        user,
        claims["exp"],
        topics,
    )


@settings(max_examples=200, deadline=None)
@given(
    secret=secrets_, other=secrets_, user=users, at=st.integers(0, 200), flip=st.integers(1, 255)
)
def test_a_token_altered_or_signed_with_another_key_is_refused(
    secret: str, other: str, user: str, at: int, flip: int
) -> None:
    verifier = TokenVerifier("HS256", secret)
    token = jwt.encode({"sub": user, "exp": int(NOW) + 60}, secret, algorithm="HS256")
    if other != secret:
        with pytest.raises(Unauthenticated):
            verifier.verify(jwt.encode({"sub": user, "exp": int(NOW) + 60}, other), now=NOW)
    raw = bytearray(token.encode())
    i = at % len(raw)
    raw[i] = (raw[i] + flip) % 128 or 1
    altered = raw.decode()
    if altered == token:
        return
    try:
        pyjwt_ok = bool(jwt.decode(altered, secret, algorithms=["HS256"], leeway=5))
    except Exception:
        pyjwt_ok = False
    try:
        verifier.verify(altered, now=NOW)
        ours_ok = True
    except Unauthenticated:
        ours_ok = False
    # base64url tolerates a change in the unused low bits of a last character:
    # then both accept; otherwise both refuse.
    assert ours_ok == pyjwt_ok


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ({"alg": "none", "typ": "JWT"}, "token algorithm is not HS256"),
        ({"alg": "HS384", "typ": "JWT"}, "token algorithm is not HS256"),
        ({"typ": "JWT"}, "token algorithm is not HS256"),
        ({"alg": "HS256", "crit": ["exp"]}, "token header has critical extensions ('crit')"),
    ],
)
def test_headers_pyjwt_would_refuse_are_refused(header: dict[str, object], why: str) -> None:
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps({"sub": "alice", "exp": int(NOW) + 60}).encode())
    with pytest.raises(Unauthenticated) as refused:
        TokenVerifier("HS256", "k").verify(_sign("k", head, body), now=NOW)
    assert str(refused.value) == why


def test_a_signature_that_is_not_base64url_is_malformed() -> None:
    head, body, _ = jwt.encode({"sub": "alice", "exp": int(NOW) + 60}, "k").split(".")
    with pytest.raises(Unauthenticated, match="signature is not base64url"):
        TokenVerifier("HS256", "k").verify(f"{head}.{body}.+/==", now=NOW)
