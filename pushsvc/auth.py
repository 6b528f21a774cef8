"""Authentication: client JWTs for WebSocket connections, API keys for gRPC callers."""

from __future__ import annotations

import fnmatch
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from pushsvc.errors import ConfigError, Unauthenticated
from pushsvc.messages import MAX_USER_ID_LEN


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a WebSocket connection belongs to, from its token."""

    user_id: str
    expires_at: float
    topics: tuple[str, ...] = ()
    jti: str = ""  # the token's id, for the revocation list ("" when it has none)

    def may_subscribe(self, topic: str) -> bool:
        return any(fnmatch.fnmatchcase(topic, pattern) for pattern in self.topics)


class TokenVerifier:
    """Checks client tokens: signature, algorithm, ``sub`` and ``exp``.

    Only the configured algorithm is accepted, so ``alg: none`` and algorithm
    confusion (an HS256 token signed with a public key) are refused.
    """

    def __init__(self, algorithm: str, key: str | bytes, leeway: float = 5.0) -> None:
        self._algorithm = algorithm
        self._key = key
        self._leeway = leeway

    @classmethod
    def from_settings(
        cls, algorithm: str, secret: str | None, public_key_file: str | None
    ) -> TokenVerifier:
        if algorithm == "HS256":
            if not secret:
                raise ConfigError("no JWT secret: set PUSHSVC_JWT_SECRET")
            return cls(algorithm, secret)
        assert public_key_file
        try:
            key = Path(public_key_file).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read PUSHSVC_JWT_PUBLIC_KEY_FILE {public_key_file}: {exc.strerror}"
            ) from None
        return cls(algorithm, key)

    def verify(self, token: str) -> Identity:
        if not token:
            raise Unauthenticated("missing token: send Authorization: Bearer <jwt> or ?token=")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                options={"require": ["sub", "exp"]},
                leeway=self._leeway,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature is wrong") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated(f"token algorithm is not {self._algorithm}") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"token is malformed: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_USER_ID_LEN:
            raise Unauthenticated("token 'sub' must be a non-empty string (the user id)")
        topics = claims.get("topics", [])
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise Unauthenticated("token 'topics' must be a list of strings")
        jti = claims.get("jti", "")
        if not isinstance(jti, str) or len(jti) > 256:
            raise Unauthenticated("token 'jti' must be a string of at most 256 characters")
        return Identity(sub, float(claims["exp"]), tuple(topics), jti)


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


class ApiKeys:
    """The set of keys gRPC callers present as ``authorization: Bearer <key>``."""

    def __init__(self, keys: tuple[str, ...] | list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    def check(self, header: str | None) -> str:
        """Return the key on success (callers rate-limit per key)."""
        if not header:
            raise Unauthenticated("missing API key: send metadata authorization: Bearer <key>")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("authorization metadata must be 'Bearer <key>'")
        raw = key.strip().encode()
        ok = False
        for candidate in self._keys:  # compare against all: constant time
            ok |= hmac.compare_digest(raw, candidate)
        if not ok:
            raise Unauthenticated("API key is not valid")
        return key.strip()


def load_or_create_secret(path: Path) -> tuple[str, bool]:
    """Read a generated secret file, or create it (mode 0600). Returns (secret, created)."""
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
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = path.open("x") if not path.exists() else path.open("w")
        with fd:
            fd.write(secret + "\n")
        path.chmod(0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    return secret, True
