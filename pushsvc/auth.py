"""Authentication: client JWTs for WebSocket connections, API keys for gRPC callers."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, NamedTuple

import jwt

from pushsvc import jsontext
from pushsvc.errors import ConfigError, InvalidArgument, Unauthenticated
from pushsvc.messages import MAX_TOPIC_LEN, first_forbidden, validate_user_id


class Identity(NamedTuple):
    """Who a WebSocket connection belongs to, from its token."""

    user_id: str
    expires_at: float
    topics: tuple[str, ...] = ()
    jti: str = ""  # the token's id, for the revocation list ("" when it has none)

    def may_subscribe(self, topic: str) -> bool:
        return any(fnmatch.fnmatchcase(topic, pattern) for pattern in self.topics)


class TokenVerifier:
    """Checks client tokens: signature, algorithm, and every claim pushsvc reads.

    Only the configured algorithm is accepted, so ``alg: none`` and algorithm
    confusion (an HS256 token signed with a public key) are refused. The header and
    the claims are parsed as strict JSON (``jsontext``) before the signature is
    verified (HS256 here, with one keyed HMAC; other algorithms by PyJWT), and the
    claims are checked here, not by PyJWT: ``exp`` (required),
    ``nbf`` and ``iat`` must be JSON numbers between 0 and the year 9999, ``exp``
    at most ``max_lifetime`` seconds after ``iat`` (or after now, without ``iat``),
    ``sub`` a user id (``messages.validate_user_id``), ``topics`` a list of
    patterns. Whatever a token holds, a bad one is ``Unauthenticated`` (401).
    """

    def __init__(
        self,
        algorithm: str,
        key: str | bytes,
        leeway: float = 5.0,
        max_lifetime: float = 0.0,
    ) -> None:
        self._algorithm = algorithm
        self._key = key
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        self._jws = jwt.PyJWS()
        # HS256, the common case, is checked here: one HMAC from a keyed state made
        # once, instead of PyJWT's key preparation and header parsing per connect.
        self._hs256 = (
            hmac.new(key.encode() if isinstance(key, str) else key, digestmod=hashlib.sha256)
            if algorithm == "HS256"
            else None
        )

    @classmethod
    def from_settings(
        cls,
        algorithm: str,
        secret: str | None,
        public_key_file: str | None,
        max_lifetime: float = 0.0,
    ) -> TokenVerifier:
        if algorithm == "HS256":
            if not secret:
                raise ConfigError("no JWT secret: set PUSHSVC_JWT_SECRET")
            return cls(algorithm, secret, max_lifetime=max_lifetime)
        assert public_key_file
        try:
            key = Path(public_key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read PUSHSVC_JWT_PUBLIC_KEY_FILE {public_key_file}: {exc.strerror}"
            ) from None
        return cls(algorithm, key, max_lifetime=max_lifetime)

    def verify(self, token: str, now: float | None = None) -> Identity:
        if not token:
            raise Unauthenticated("missing token: send Authorization: Bearer <jwt> or ?token=")
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated(f"token is over {MAX_TOKEN_LENGTH} characters")
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthenticated("token is malformed: not three dot-separated parts")
        header = _segment(parts[0], "header")
        claims = _segment(parts[1], "claims")
        if self._hs256 is not None:
            self._check_hs256(header, parts)
        else:
            self._check_signature(token)
        return self._identity(claims, time.time() if now is None else now)

    def _check_hs256(self, header: dict[str, Any], parts: list[str]) -> None:
        """RFC 7515 5.2 for HS256: the header names HS256 and no critical extension,
        and the signature is the HMAC-SHA256 of ``header.claims`` under the key."""
        assert self._hs256 is not None
        if header.get("alg") != "HS256":
            raise Unauthenticated("token algorithm is not HS256")
        if "crit" in header:
            raise Unauthenticated("token header has critical extensions ('crit')")
        signature = parts[2]
        if not _BASE64URL.fullmatch(signature) or len(signature) % 4 == 1:
            raise Unauthenticated("token is malformed: its signature is not base64url")
        given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        mac = self._hs256.copy()
        mac.update(f"{parts[0]}.{parts[1]}".encode("ascii"))
        if not hmac.compare_digest(mac.digest(), given):
            raise Unauthenticated("token signature is wrong")

    def _check_signature(self, token: str) -> None:
        try:
            self._jws.decode_complete(token, self._key, algorithms=[self._algorithm])
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature is wrong") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated(f"token algorithm is not {self._algorithm}") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"token is malformed: {exc}") from None
        except Exception as exc:  # a key or a library that chokes on odd input: still a 401
            raise Unauthenticated(f"token is malformed: {type(exc).__name__}") from None

    def _identity(self, claims: dict[str, Any], now: float) -> Identity:
        leeway = self._leeway
        if "sub" not in claims:
            raise Unauthenticated("token has no 'sub' claim")
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("token 'sub' must be a non-empty string (the user id)")
        try:
            validate_user_id(sub)
        except InvalidArgument as exc:
            raise Unauthenticated(f"token 'sub': {exc}") from None
        if "exp" not in claims:
            raise Unauthenticated("token has no 'exp' claim")
        exp = _time_claim(claims, "exp")
        assert exp is not None
        nbf = _time_claim(claims, "nbf")
        iat = _time_claim(claims, "iat")
        if exp <= now - leeway:
            raise Unauthenticated("token expired")
        if nbf is not None and nbf > now + leeway:
            raise Unauthenticated("token is not valid yet ('nbf' is in the future)")
        if iat is not None and iat > now + leeway:
            raise Unauthenticated("token was issued in the future ('iat')")
        if self._max_lifetime:
            lifetime = exp - (iat if iat is not None else now)
            if lifetime > self._max_lifetime + leeway:
                raise Unauthenticated(
                    f"token is valid for {lifetime:.0f} s, over the maximum of "
                    f"{self._max_lifetime:.0f} s: mint shorter-lived tokens"
                )
        topics = claims.get("topics", [])
        if (
            not isinstance(topics, list)
            or len(topics) > MAX_TOPIC_PATTERNS
            or not all(isinstance(t, str) and 0 < len(t) <= MAX_TOPIC_LEN for t in topics)
            or any(first_forbidden(t) is not None for t in topics)
        ):
            raise Unauthenticated(
                f"token 'topics' must be a list of at most {MAX_TOPIC_PATTERNS} patterns "
                f"of 1 to {MAX_TOPIC_LEN} characters"
            )
        jti = claims.get("jti", "")
        if not isinstance(jti, str) or len(jti) > 256 or first_forbidden(jti) is not None:
            raise Unauthenticated("token 'jti' must be a string of at most 256 characters")
        return Identity(sub, exp, tuple(topics), jti)


MAX_TOKEN_LENGTH = 8192
MAX_TOPIC_PATTERNS = 100
LATEST_TIME = 253402300799  # 9999-12-31T23:59:59Z: the largest time a claim may hold
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _segment(part: str, what: str) -> dict[str, Any]:
    """A token's header or claims: base64url of a strict JSON object."""
    if not _BASE64URL.fullmatch(part) or len(part) % 4 == 1:
        raise Unauthenticated(f"token is malformed: its {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except ValueError:
        raise Unauthenticated(f"token is malformed: its {what} is not base64url") from None
    try:
        value = jsontext.loads(raw, max_depth=16)
    except jsontext.JsonError as exc:
        raise Unauthenticated(f"token is malformed: its {what} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Unauthenticated(f"token is malformed: its {what} is not a JSON object")
    return value


def _time_claim(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate (RFC 7519 2): a JSON number of seconds, here between 0 and 9999."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthenticated(f"token {name!r} must be a number of seconds since 1970")
    if not 0 <= value <= LATEST_TIME:
        raise Unauthenticated(f"token {name!r} is out of range (0 to {LATEST_TIME})")
    return float(value)


def mint_token(
    secret: str,
    user_id: str,
    ttl: int = 3600,
    topics: list[str] | None = None,
    jti: str | None = None,
) -> str:
    """An HS256 client token, as `pushsvc token` prints it."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl}
    if topics:
        claims["topics"] = topics
    if jti:
        claims["jti"] = jti
    return jwt.encode(claims, secret, algorithm="HS256")


_ACCEPTED_HEADERS = 256  # valid headers remembered by ``ApiKeys``, at most


class ApiKeys:
    """The set of keys gRPC callers present as ``authorization: Bearer <key>``."""

    def __init__(self, keys: tuple[str, ...] | list[str]) -> None:
        self._keys = [k.encode() for k in keys]
        # Headers already found valid -> their key: a caller sends the same header on
        # every call. Looking one up reveals nothing of a key by its timing (string
        # hashes are salted per process: a guess cannot aim at a stored header's
        # bucket); a header not in it takes the comparison against every key.
        self._accepted: dict[str, str] = {}

    def check(self, header: str | None) -> str:
        """Return the key on success (callers rate-limit per key)."""
        if not header:
            raise Unauthenticated("missing API key: send metadata authorization: Bearer <key>")
        known = self._accepted.get(header)
        if known is not None:
            return known
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("authorization metadata must be 'Bearer <key>'")
        raw = key.strip().encode()
        ok = False
        for candidate in self._keys:  # compare against all: constant time
            ok |= hmac.compare_digest(raw, candidate)
        if not ok:
            raise Unauthenticated("API key is not valid")
        key = key.strip()
        if len(self._accepted) < _ACCEPTED_HEADERS:  # spellings of the keys: a few
            self._accepted[header] = key
        return key


def load_or_create_secret(path: Path) -> tuple[str, bool]:
    """Read a generated secret file, or create it: mode 0600, in a directory created
    0700. Returns (secret, created)."""
    try:
        text = path.read_text().strip()
        if text:
            return text, False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    secret = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created with its final mode: never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
        path.chmod(0o600)  # an existing empty file keeps its mode through O_CREAT
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    return secret, True
