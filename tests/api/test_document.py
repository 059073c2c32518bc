"""The OpenAPI document is valid 3.1 and describes exactly the app's routes."""

from __future__ import annotations

from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from dkserver.web.app import DkApp
from tests.api.document import (
    IMPLICIT_METHODS,
    NOT_YET_ROUTED,
    load,
    openapi_path,
)

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def routed() -> dict[str, set[str]]:
    """OpenAPI path -> methods, from the Klein app's werkzeug url_map."""
    routes: dict[str, set[str]] = {}
    for rule in DkApp.app.url_map.iter_rules():
        methods = set(rule.methods or ()) - IMPLICIT_METHODS
        routes.setdefault(openapi_path(rule.rule), set()).update(methods)
    return routes


def documented() -> dict[str, set[str]]:
    return {
        path: {m.upper() for m in item if m in HTTP_METHODS}
        for path, item in load()["paths"].items()
    }


def test_document_is_valid_openapi_3_1():
    doc = load()
    assert doc["openapi"].startswith("3.1.")
    validate(doc, cls=OpenAPIV31SpecValidator)


def test_rule_conversion_matches_openapi_templates():
    assert openapi_path("/auth/users/<string:user_id>") == "/auth/users/{user_id}"
    assert openapi_path("/static/<name>") == "/static/{name}"
    assert openapi_path("/a/<int:x>/b/<y>") == "/a/{x}/b/{y}"


def mismatches(
    routes: dict[str, set[str]], docs: dict[str, set[str]], not_yet: set[str]
) -> list[str]:
    """Every way the routes and the document disagree (empty: they agree)."""
    problems = []
    for path, methods in routes.items():
        if path in not_yet:
            problems.append(f"{path} is routed now: remove it from NOT_YET_ROUTED")
        elif path not in docs:
            problems.append(f"{path} is routed but not in openapi.json")
        elif docs[path] != methods:
            problems.append(
                f"{path}: routed {sorted(methods)}, documented {sorted(docs[path])}"
            )
    for path in sorted(docs.keys() - routes.keys() - not_yet):
        problems.append(f"{path} is documented but the app does not route it")
    return problems


def test_routes_and_document_agree_on_paths_and_methods():
    assert mismatches(routed(), documented(), NOT_YET_ROUTED) == []


def test_mismatches_catch_drift_and_a_stale_not_yet_routed_entry():
    docs = {"/a": {"GET"}, "/b/{x}": {"POST"}, "/new": {"GET"}}
    assert mismatches({"/a": {"GET"}, "/b/{x}": {"POST"}}, docs, {"/new"}) == []
    assert mismatches(
        {"/a": {"GET"}, "/b/{x}": {"POST"}, "/new": {"GET"}}, docs, {"/new"}
    ) == ["/new is routed now: remove it from NOT_YET_ROUTED"]
    assert mismatches({"/a": {"GET", "POST"}, "/c": {"GET"}}, docs, {"/new"}) == [
        "/a: routed ['GET', 'POST'], documented ['GET']",
        "/c is routed but not in openapi.json",
        "/b/{x} is documented but the app does not route it",
    ]


def test_not_yet_routed_names_only_documented_paths():
    assert NOT_YET_ROUTED <= set(documented())


def test_every_error_response_is_the_shared_error_shape():
    doc = load()
    shared = doc["components"]["responses"]
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for code, response in operation["responses"].items():
                if not code.startswith(("4", "5")):
                    continue
                if "$ref" in response:
                    response = shared[response["$ref"].rsplit("/", 1)[1]]
                content = response["content"]
                assert list(content) == ["application/json"], (method, path, code)
                schema = content["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (
                    method,
                    path,
                    code,
                )


def test_authenticated_operations_declare_bearer_security_and_401():
    doc = load()
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if {"bearerAuth": []} in operation.get("security", []):
                assert "401" in operation["responses"], (method, path)


def test_forward_request_message_is_checked_only_without_query():
    """The server ignores ``message`` when ``query`` is there (schemathesis
    found the document refusing ``{"query": "q", "message": ""}``)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(load()["components"]["schemas"]["ForwardRequest"])
    assert validator.is_valid({"type": "forward", "query": "q", "message": ""})
    assert validator.is_valid({"type": "forward", "query": "q", "message": 5})
    assert validator.is_valid({"type": "forward", "message": "m"})
    assert not validator.is_valid({"type": "forward", "message": ""})
    assert not validator.is_valid({"type": "forward", "query": "", "message": "m"})


def test_request_limits_are_the_codes():
    """Every limit the document states for trackers and APIs is the constant
    dkserver/web/trackers.py enforces (and files.py for tracker names)."""
    from dkserver.web import files, trackers

    schemas = load()["components"]["schemas"]
    name = schemas["Name"]
    assert (name["minLength"], name["maxLength"]) == (1, trackers.MAX_NAME)
    tracker_list = schemas["TrackersRequest"]["properties"]["trackers"]
    assert tracker_list["maxProperties"] == trackers.MAX_TRACKERS
    tracker = schemas["TrackerInput"]["properties"]
    assert tracker["tracker_description"]["maxLength"] == trackers.MAX_DESCRIPTION
    assert tracker["tracker_version"]["maxLength"] == trackers.MAX_VERSION
    assert str(trackers.MAX_DOCUMENTS_BYTES) in schemas["TrackerInput"]["description"]
    string_map = schemas["StringMap"]
    assert string_map["maxProperties"] == trackers.MAX_MAP_ENTRIES
    assert string_map["propertyNames"]["maxLength"] == trackers.MAX_MAP_KEY
    api = schemas["ApiRequest"]["properties"]
    assert api["documents"]["maxItems"] == trackers.MAX_API_DOCUMENTS
    assert api["documents"]["items"]["maxLength"] == trackers.MAX_API_DOCUMENT
    assert api["policy"]["maxLength"] == trackers.MAX_POLICY
    folder = load()["paths"]["/tracker-folder/{name}"]["get"]["parameters"][0]
    assert folder["schema"]["pattern"] == f"^{files.TRACKER_NAME.pattern}$"
    app = load()["paths"]["/download/app/{platform}"]["get"]["parameters"][0]
    assert set(app["schema"]["enum"]) == set(files.APP_FILES)
