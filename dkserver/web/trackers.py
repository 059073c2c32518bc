"""Request bodies and response shapes of /user/trackers, /trackers, /user/apis
and /apis (PROTOCOL.md, "Endpoints of the current original server").

Parsing follows the original's Go types where a well-behaved client could
notice (``null`` for an optional string or map reads as empty, unknown fields
are ignored) and is stricter elsewhere: every value must have its type, and
the limits below bound what one user can make the server store and serve.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dkserver.store import Api, Tracker, TrackerInfo
from dkserver.store.trackers import encode_documents
from dkserver.web.responses import BadRequest

#: Trackers in one user's list (the list is replaced whole, so also per post).
MAX_TRACKERS = 100
#: Characters of a tracker or API name.
MAX_NAME = 128
MAX_DESCRIPTION = 4096
MAX_VERSION = 128
#: Entries in one ``datasets`` or ``templates`` map, and characters of a key.
MAX_MAP_ENTRIES = 256
MAX_MAP_KEY = 256
#: UTF-8 bytes of one tracker's stored ``tracker_documents`` JSON.
MAX_DOCUMENTS_BYTES = 256 * 1024
#: APIs per user, documents per API, characters of a document and a policy.
MAX_APIS = 100
MAX_API_DOCUMENTS = 1000
MAX_API_DOCUMENT = 1024
MAX_POLICY = 64 * 1024

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _optional_string(value: object, what: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    if len(value) > limit:
        raise BadRequest(f"{what} must be at most {limit} characters")
    return value


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} is required and must be a non-empty string")
    if len(value) > MAX_NAME:
        raise BadRequest(f"{what} must be at most {MAX_NAME} characters")
    if _CONTROL.search(value):
        raise BadRequest(f"{what} must not contain control characters")
    return value


def _string_map(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object of strings")
    if len(value) > MAX_MAP_ENTRIES:
        raise BadRequest(f"{what} must have at most {MAX_MAP_ENTRIES} entries")
    for key, item in value.items():
        if not isinstance(item, str):
            raise BadRequest(f"{what} values must be strings")
        if len(key) > MAX_MAP_KEY:
            raise BadRequest(f"{what} keys must be at most {MAX_MAP_KEY} characters")
    return value


def _tracker(name: str, value: object) -> TrackerInfo:
    what = f"tracker {name[:MAX_NAME]!r}"
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object")
    documents = value.get("tracker_documents")
    if documents is None:
        documents = {}
    elif not isinstance(documents, dict):
        raise BadRequest(f"tracker_documents of {what} must be an object")
    info = TrackerInfo(
        _optional_string(
            value.get("tracker_description"),
            f"tracker_description of {what}",
            MAX_DESCRIPTION,
        ),
        _optional_string(
            value.get("tracker_version"), f"tracker_version of {what}", MAX_VERSION
        ),
        _string_map(documents.get("datasets"), f"datasets of {what}"),
        _string_map(documents.get("templates"), f"templates of {what}"),
    )
    if len(encode_documents(info).encode("utf-8")) > MAX_DOCUMENTS_BYTES:
        raise BadRequest(
            f"tracker_documents of {what} must be at most {MAX_DOCUMENTS_BYTES} bytes"
        )
    return info


def parse_tracker_list(body: Any) -> dict[str, TrackerInfo]:
    """``{"user_id": ignored, "trackers": {name: tracker}}`` → the new list."""
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    if not isinstance(body.get("user_id", ""), str | None):
        raise BadRequest("user_id must be a string")
    trackers = body.get("trackers")
    if not isinstance(trackers, dict):
        raise BadRequest("Field 'trackers' must be an object of trackers by name")
    if not trackers:
        raise BadRequest("Tracker list cannot be empty")
    if len(trackers) > MAX_TRACKERS:
        raise BadRequest(f"At most {MAX_TRACKERS} trackers per user")
    return {
        _name(name, "tracker_name"): _tracker(name, value)
        for name, value in trackers.items()
    }


def parse_api(body: Any) -> tuple[str, list[str], str]:
    """``{"api_name", "documents", "policy"}`` → (name, documents, policy)."""
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    name = _name(body.get("api_name"), "api_name")
    documents = body.get("documents")
    if documents is None:
        documents = []
    if not isinstance(documents, list):
        raise BadRequest("documents must be an array of strings")
    if len(documents) > MAX_API_DOCUMENTS:
        raise BadRequest(f"documents must have at most {MAX_API_DOCUMENTS} entries")
    for item in documents:
        if not isinstance(item, str):
            raise BadRequest("documents must be an array of strings")
        if len(item) > MAX_API_DOCUMENT:
            raise BadRequest(
                f"each document must be at most {MAX_API_DOCUMENT} characters"
            )
    policy = _optional_string(body.get("policy"), "policy", MAX_POLICY)
    return name, documents, policy


def _maps(info: TrackerInfo) -> dict[str, Mapping[str, str]]:
    out: dict[str, Mapping[str, str]] = {}
    if info.datasets:
        out["datasets"] = info.datasets
    if info.templates:
        out["templates"] = info.templates
    return out


def tracker_json(tracker: Tracker) -> dict[str, Any]:
    """The original's JSON shape; empty description/version/maps are omitted."""
    out: dict[str, Any] = {
        "id": tracker.id,
        "user_id": tracker.user_id,
        "tracker_name": tracker.name,
    }
    if tracker.info.description:
        out["tracker_description"] = tracker.info.description
    if tracker.info.version:
        out["tracker_version"] = tracker.info.version
    out["tracker_documents"] = _maps(tracker.info)
    out["created_at"] = tracker.created_at
    out["updated_at"] = tracker.updated_at
    if tracker.username is not None:
        out["username"] = tracker.username
    return out


def api_json(api: Api) -> dict[str, Any]:
    out: dict[str, Any] = {"id": api.id, "user_id": api.user_id, "api_name": api.name}
    if api.documents:
        out["documents"] = api.documents
    if api.policy:
        out["policy"] = api.policy
    out["created_at"] = api.created_at
    out["updated_at"] = api.updated_at
    if api.username is not None:
        out["username"] = api.username
    return out
