"""A test-side client that follows PROTOCOL.md: keys, register, login."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from tests.support.server import RunningServer


@dataclass
class Identity:
    user_id: str
    username: str = "Test User"
    signing_key: SigningKey = field(default_factory=SigningKey.generate)

    @classmethod
    def from_seed_hex(cls, user_id: str, seed_hex: str) -> Identity:
        return cls(user_id, user_id, SigningKey(bytes.fromhex(seed_hex)))

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(bytes(self.signing_key.verify_key)).decode()

    def sign_b64(self, data: bytes) -> str:
        return base64.b64encode(self.signing_key.sign(data).signature).decode()


async def post_json(server: RunningServer, path: str, body, headers=None):
    """POST a JSON body; returns (status, parsed body or text)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await server.http.post(
        server.url(path),
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return response.code, await _decode(response)


async def get(server: RunningServer, path: str, headers=None):
    response = await server.http.get(server.url(path), headers=headers or {})
    return response.code, await _decode(response)


async def _decode(response):
    raw = await response.content()
    ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
    if ctype.startswith(b"application/json"):
        return json.loads(raw)
    return raw.decode("utf-8", "replace")


async def register(server: RunningServer, ident: Identity) -> int:
    code, _ = await post_json(
        server,
        "/auth/register",
        {
            "user_id": ident.user_id,
            "username": ident.username,
            "public_key": ident.public_key_b64,
        },
    )
    return code


async def login(server: RunningServer, ident: Identity) -> str:
    code, body = await post_json(server, "/auth/login", {"user_id": ident.user_id})
    assert code == 200, body
    challenge = body["challenge"]
    code, body = await post_json(
        server,
        "/auth/login?verify=true",
        {"user_id": ident.user_id, "signature": ident.sign_b64(challenge.encode())},
    )
    assert code == 200, body
    return body["token"]


async def register_and_login(server: RunningServer, ident: Identity) -> str:
    assert await register(server, ident) == 201
    return await login(server, ident)
