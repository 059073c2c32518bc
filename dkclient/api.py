"""The REST half of PROTOCOL.md over ``urllib.request``.

Synchronous on purpose: the CLI makes a handful of calls; the WebSocket
session runs these in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from dkclient.exits import EXIT_ERROR, EXIT_UNREACHABLE

DEFAULT_TIMEOUT = 15.0


class ClientError(Exception):
    """Base of every error the client library raises on purpose."""

    #: The ``dk`` exit status for this kind of failure.
    exit_code = EXIT_ERROR


class Unreachable(ClientError):
    """The server cannot be reached (DNS, refused, TLS, timeout)."""

    exit_code = EXIT_UNREACHABLE


class ApiError(ClientError):
    """The server answered with an error status."""

    def __init__(self, status: int, message: str, url: str = "") -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status
        self.message = message
        self.url = url


def make_ssl_context(
    insecure: bool = False, cacert: str | None = None
) -> ssl.SSLContext:
    """Verifying TLS context; ``cacert`` trusts a specific certificate (a
    self-signed development server's), ``insecure`` verifies nothing."""
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    try:
        return (
            ssl.create_default_context(cafile=cacert)
            if cacert
            else (ssl.create_default_context())
        )
    except (OSError, ssl.SSLError) as e:
        raise ClientError(f"cannot load CA certificate {cacert}: {e}") from None


def normalize_server(url: str) -> str:
    """``host:port`` or a URL → ``https://host:port`` (no trailing slash)."""
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ClientError(f"not a server URL: {url!r} (expected https://host:port)")
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")
    )


def _tls_hint(reason: object) -> str:
    text = str(reason)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            f"{text} (a self-signed development server? pass --cacert FILE "
            "with its certificate, or --insecure)"
        )
    return text


class Api:
    """One server's REST endpoints."""

    def __init__(
        self,
        server: str,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.server = normalize_server(server)
        self.ssl_context = ssl_context
        self.timeout = timeout
        handlers: list[Any] = []
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        self._opener = urllib.request.build_opener(*handlers)

    def url(self, path: str) -> str:
        return self.server + path

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Any]:
        """(status, parsed JSON or text); raises ApiError for 4xx/5xx."""
        headers = {"Accept": "application/json", "User-Agent": "dk-python"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = self.url(path)
        req = urllib.request.Request(  # noqa: S310 - scheme checked in normalize_server
            url, data=data, headers=headers, method=method
        )
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as resp:
                return resp.status, _decode(resp.read(), resp.headers)
        except urllib.error.HTTPError as e:
            payload = _decode(e.read(), e.headers)
            if isinstance(payload, dict) and isinstance(payload.get("message"), str):
                message = payload["message"]
            else:
                message = str(payload).strip() or str(e.reason)
            if e.code in (301, 302, 307, 308) and e.headers.get("Location"):
                message = f"redirected to {e.headers['Location']}; use that --server"
            raise ApiError(e.code, message, url) from None
        except urllib.error.URLError as e:
            raise Unreachable(
                f"cannot reach {self.server}: {_tls_hint(e.reason)}"
            ) from None
        except TimeoutError as e:
            raise Unreachable(f"{self.server} did not answer in time ({e})") from None
        except (ssl.SSLError, ConnectionError, OSError) as e:
            raise Unreachable(f"cannot reach {self.server}: {_tls_hint(e)}") from None

    # -- authentication --

    def register(self, user_id: str, username: str, public_key_b64: str) -> None:
        self.request(
            "POST",
            "/auth/register",
            {"user_id": user_id, "username": username, "public_key": public_key_b64},
        )

    def challenge(self, user_id: str) -> str:
        _, body = self.request("POST", "/auth/login", {"user_id": user_id})
        if not isinstance(body, dict) or not isinstance(body.get("challenge"), str):
            raise ClientError(f"unexpected login answer: {body!r}")
        return body["challenge"]

    def verify(self, user_id: str, signature_b64: str) -> str:
        _, body = self.request(
            "POST",
            "/auth/login?verify=true",
            {"user_id": user_id, "signature": signature_b64},
        )
        if not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise ClientError(f"unexpected login answer: {body!r}")
        return body["token"]

    def get_user(self, user_id: str) -> dict:
        _, body = self.request("GET", "/auth/users/" + _segment(user_id))
        if not isinstance(body, dict) or not isinstance(body.get("public_key"), str):
            raise ClientError(f"unexpected user record: {body!r}")
        return body

    def user_exists(self, user_id: str) -> bool:
        _, body = self.request("GET", "/auth/check-userid/" + _segment(user_id))
        return bool(isinstance(body, dict) and body.get("exists"))

    # -- the rest --

    def active_users(self) -> dict[str, list[str]]:
        _, body = self.request("GET", "/active-users")
        if not isinstance(body, dict):
            raise ClientError(f"unexpected /active-users answer: {body!r}")
        return {
            "online": list(body.get("online") or []),
            "offline": list(body.get("offline") or []),
        }

    def get_descriptions(self, user_id: str) -> list[str]:
        _, body = self.request("GET", "/user/descriptions/" + _segment(user_id))
        if not isinstance(body, list):
            raise ClientError(f"unexpected descriptions answer: {body!r}")
        return [str(d) for d in body]

    def set_descriptions(self, token: str, descriptions: list[str]) -> None:
        self.request("POST", "/user/descriptions", list(descriptions), token=token)

    def ask_forward(self, token: str, query: str, timeout: float = 40.0) -> str:
        """POST /direct-message/: ask the token owner's own connected client."""
        _, body = self.request(
            "POST",
            "/direct-message/",
            {"type": "forward", "query": query},
            token=token,
            timeout=timeout,
        )
        if not isinstance(body, dict):
            raise ClientError(f"unexpected /direct-message/ answer: {body!r}")
        return str(body.get("answer", ""))


def _segment(user_id: str) -> str:
    return urllib.parse.quote(user_id, safe="")


def _decode(raw: bytes, headers) -> Any:
    ctype = (headers.get("Content-Type") or "") if headers is not None else ""
    text = raw.decode("utf-8", "replace")
    if "json" in ctype or text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text
