"""Property-based tests: no input makes the frame parser, the timestamp parser
or a REST endpoint fail in any way other than the documented refusal.

* ``frames.parse_client_frame`` returns a ClientMessage or raises FrameError;
* ``timestamps.parse`` returns a Timestamp or raises TimestampError;
* every POST endpoint answers any body with a status below 500, and every 4xx
  is the JSON error of PROTOCOL.md (against the real server over TLS).
"""

from __future__ import annotations

import json
from base64 import b64encode
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from twisted.internet import defer, reactor, threads

from dkserver import timestamps
from dkserver.ws import frames
from tests.support.client import Identity, get, post_json, register_and_login
from tests.support.server import make_config, start_server, stop_server
from tests.support.ws import connect

#: Storage behaviour: on SQLite and on PostgreSQL.
pytestmark = pytest.mark.both_backends

USER = "alice"
NOW_NS = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z

FAST = settings(max_examples=300, deadline=None)
REST = settings(max_examples=60, deadline=None)

# --- strategies -----------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


def _dumps(value, ascii_only: bool) -> bytes:
    # ensure_ascii=False keeps lone surrogates as raw (invalid) UTF-8.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def json_bytes(values) -> st.SearchStrategy[bytes]:
    return st.builds(_dumps, values, st.booleans())


@st.composite
def valid_timestamps(draw) -> tuple[str, int]:
    """RFC 3339 text and its exact Unix nanoseconds (computed independently)."""
    moment = draw(
        st.datetimes(
            min_value=datetime(1, 1, 2),  # naive; the zone is added below
            max_value=datetime(9999, 12, 30),
        )
    ).replace(microsecond=0)
    digits = draw(st.integers(min_value=0, max_value=9))
    fraction = draw(st.integers(min_value=0, max_value=10**digits - 1))
    offset = draw(st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59))
    zulu = draw(st.sampled_from(["Z", "z", None]))
    sep = draw(st.sampled_from("Tt "))
    if zulu and offset == 0:
        zone = zulu
    else:
        sign = "-" if offset < 0 else "+"
        zone = f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    m = moment
    text = f"{m.year:04d}-{m.month:02d}-{m.day:02d}{sep}"
    text += f"{m.hour:02d}:{m.minute:02d}:{m.second:02d}"
    if digits:
        text += "." + f"{fraction:0{digits}d}"
    text += zone
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset)))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    seconds = (aware - epoch) // timedelta(seconds=1)
    nanos = fraction * 10 ** (9 - digits) if digits else 0
    return text, seconds * 1_000_000_000 + nanos


#: Text shaped like a timestamp, often out of range or subtly malformed.
timestamp_like = st.from_regex(
    r"\A[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,3}[Tt _][0-9]{1,2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{0,12})?([Zz]|[+-][0-9]{2}:?[0-9]{2})?\n?\Z",
    fullmatch=True,
)
timestamp_inputs = st.one_of(
    valid_timestamps().map(lambda pair: pair[0]),
    timestamp_like,
    st.just(timestamps.ZERO_TIME),
    st.sampled_from(["", "0", "now", "2025-02-30T00:00:00Z", "2025-01-01T24:00:00Z"]),
    st.text(max_size=40),
)
any_value = json_values | st.sampled_from(["", USER, "bob", "broadcast", "system"])


def _frame_dicts() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {},
        optional={
            "from": any_value,
            "to": any_value,
            "content": any_value,
            "timestamp": timestamp_inputs | json_values,
            "signature": any_value,
            "is_forward_message": any_value,
            "is_broadcast": any_value,
            "id": any_value,
            "status": any_value,
        },
    )


# --- (a) the frame parser -------------------------------------------------------------


def parse_or_refuse(payload: bytes) -> frames.ClientMessage | None:
    """Parse; a FrameError is fine (its text must make a system frame)."""
    try:
        message = frames.parse_client_frame(payload, USER, NOW_NS)
    except frames.FrameError as e:
        assert str(e)
        json.loads(frames.system_frame(USER, str(e)))
        return None
    assert isinstance(message, frames.ClientMessage)
    assert isinstance(message.to, str) and message.to
    assert isinstance(message.content, str)
    assert isinstance(message.signature, str)
    assert isinstance(message.timestamp, timestamps.Timestamp)
    assert type(message.is_forward_message) is bool
    assert message.is_broadcast == (message.to == frames.BROADCAST)
    # Whatever was accepted can be encoded back into a server frame.
    json.loads(
        frames.encode_message(
            1,
            USER,
            message.to,
            message.timestamp.text,
            message.content,
            "pending",
            is_broadcast=message.is_broadcast,
            signature=message.signature,
            is_forward_message=message.is_forward_message,
        )
    )
    return message


@FAST
@given(st.binary(max_size=300))
@example(b"")
@example(b"\xff\xfe")
@example(b"[" * 5000)
@example(b'{"to":"bob","content":"\\ud800"}')
@example(b'{"to":"bob","content":"x","to":"carol"}')
def test_parser_on_arbitrary_bytes(payload):
    parse_or_refuse(payload)


@FAST
@given(json_bytes(json_values))
def test_parser_on_arbitrary_json(payload):
    parse_or_refuse(payload)


@FAST
@given(_frame_dicts(), st.booleans())
@example({"to": "bob", "content": "x", "timestamp": timestamps.ZERO_TIME}, True)
@example({"to": "bob", "content": "x", "from": 0}, True)
@example({"to": "bob", "content": "x", "signature": 0}, True)
def test_parser_on_frames_with_known_keys_of_any_type(obj, ascii_only):
    message = parse_or_refuse(_dumps(obj, ascii_only))
    if message is None:
        return
    assert obj.get("from") in (None, "", USER)
    assert message.to == obj["to"] and message.content == obj["content"]
    assert message.is_forward_message == obj.get("is_forward_message", False)
    assert message.is_broadcast == (obj["to"] == "broadcast")
    raw_ts = obj.get("timestamp")
    if raw_ts in (None, "", timestamps.ZERO_TIME):
        assert message.timestamp.unix_nanos == NOW_NS
    else:
        # Byte-exact relay: the text is kept exactly as it arrived.
        assert message.timestamp.text == raw_ts
    if isinstance(obj.get("signature"), str):
        assert message.signature == obj["signature"]


@FAST
@given(valid_timestamps(), st.text(max_size=30), st.sampled_from(["bob", "broadcast"]))
def test_parser_keeps_valid_timestamps_exact(stamp, content, to):
    text, nanos = stamp
    payload = json.dumps(
        {"from": USER, "to": to, "content": content, "timestamp": text}
    )
    message = parse_or_refuse(payload.encode())
    assert message is not None
    assert message.timestamp.text == text
    assert message.timestamp.unix_nanos == nanos


# --- (b) the timestamp parser ---------------------------------------------------------


@FAST
@given(timestamp_inputs | json_values | st.binary(max_size=30), st.booleans())
def test_timestamp_parse_raises_only_timestamp_error(value, allow_naive):
    try:
        parsed = timestamps.parse(value, allow_naive=allow_naive)
    except timestamps.TimestampError as e:
        assert str(e)
        return
    assert parsed.text == value
    assert isinstance(parsed.unix_nanos, int)
    # The stored form names the same instant.
    stored = timestamps.to_storage(parsed.text)
    again = timestamps.parse(timestamps.from_storage(stored), allow_naive=True)
    assert again.unix_nanos == parsed.unix_nanos


@FAST
@given(valid_timestamps())
def test_timestamp_parse_is_exact_to_the_nanosecond(stamp):
    text, nanos = stamp
    assert timestamps.parse(text).unix_nanos == nanos
    stored = timestamps.to_storage(text)
    assert timestamps.parse(timestamps.from_storage(stored)).unix_nanos == nanos


NON_ASCII_DIGITS = [
    "\uff12\uff10\uff12\uff15-01-01T00:00:00Z",  # fullwidth year
    "2025-01-01T00:00:00.\u0661\u0662\u0663Z",  # Arabic-Indic fraction
    "2025-01-01T00:00:00+\u0660\u0663:00",  # Arabic-Indic offset
    "2025-01-01T\u0967\u0968:00:00Z",  # Devanagari hour
]


@pytest.mark.parametrize("text", NON_ASCII_DIGITS)
def test_timestamp_digits_must_be_ascii(text):
    with pytest.raises(timestamps.TimestampError):
        timestamps.parse(text)


# --- (c) every REST body --------------------------------------------------------------


@pytest_twisted.async_yield_fixture(scope="module")
async def rest(tmp_path_factory, module_db_target):
    """One real server for all REST properties: login limits lifted, a user
    with a token, and that user's client connected (and never answering), so
    /direct-message/ reaches its (tiny) timeout."""
    tmp = tmp_path_factory.mktemp("rest")
    server = await start_server(
        make_config(tmp, module_db_target, forward_timeout=0.05)
    )
    ident = Identity("prop_user")
    token = await register_and_login(server, ident)
    ws = await connect(server, token)
    yield SimpleNamespace(server=server, ident=ident, token=token, ws=ws)
    ws.close()
    await ws.wait_closed()
    await stop_server(server)


# pytest-twisted runs every test in the reactor's greenlet, which must not
# block; so each REST property runs Hypothesis in a worker thread and every
# example waits for its request with blockingCallFromThread.


def blocking(coro, timeout: float = 10.0):
    """From the Hypothesis thread: run ``coro`` on the reactor, wait for it."""

    def start() -> defer.Deferred:
        return defer.ensureDeferred(coro).addTimeout(timeout, reactor)

    return threads.blockingCallFromThread(reactor, start)


async def check(prop) -> None:
    """Run a @given test (no arguments left) in a worker thread."""
    await threads.deferToThread(prop)


def post(rest, path: str, body: bytes, auth: bool = False):
    headers = {"Authorization": f"Bearer {rest.token}"} if auth else {}
    return blocking(post_json(rest.server, path, body, headers))


def assert_no_server_error(code: int, body, what) -> None:
    assert code < 500, (what, code, body)
    if 400 <= code < 500:
        assert isinstance(body, dict), (what, code, body)
        assert body.get("error") is True, (what, code, body)
        assert isinstance(body.get("message"), str) and body["message"], (what, body)
        assert set(body) == {"error", "message"}, (what, body)


def _b64(data: bytes) -> str:
    return b64encode(data).decode()


user_ids = st.one_of(
    st.text(min_size=1, max_size=140),
    st.from_regex(r"[A-Za-z0-9_.'\"<>&;=*$(){}-]{1,24}", fullmatch=True),
    st.sampled_from(["system", "System", "broadcast", "prop_user", ".", "..", "a/b"]),
    st.sampled_from(["a?b", "a#b", "a%b", "a\\b", "a b", "a\tb", "\u200bx", "x" * 129]),
    json_values,
)
usernames = st.one_of(
    st.text(max_size=300),
    st.sampled_from(["Ada Lovelace", " ", "<b>x</b>", "x" * 257, "a\nb"]),
    json_values,
)
public_keys = st.one_of(
    st.builds(
        lambda seed: _b64(bytes(SigningKey(seed).verify_key)),
        st.binary(min_size=32, max_size=32),
    ),
    st.binary(max_size=40).map(_b64),
    st.sampled_from([_b64(b"\0" * 32), _b64(b"\x01" + b"\0" * 31), _b64(b"\xff" * 32)]),
    st.text(max_size=50),
    json_values,
)
signatures = st.one_of(
    st.binary(min_size=64, max_size=64).map(_b64),
    st.binary(max_size=80).map(_b64),
    st.text(max_size=100),
    json_values,
)


def bodies(fields: dict) -> st.SearchStrategy[bytes]:
    """Any JSON, any bytes, and objects with the endpoint's fields: all of
    them (twice as likely, to get past the shape checks) or some."""
    complete = json_bytes(st.fixed_dictionaries(fields))
    return st.one_of(
        json_bytes(json_values),
        st.binary(max_size=200),
        json_bytes(st.fixed_dictionaries({}, optional=fields)),
        complete,
        complete,
    )


REGISTER_BODIES = bodies(
    {"user_id": user_ids, "username": usernames, "public_key": public_keys}
)
LOGIN_BODIES = bodies({"user_id": user_ids})
VERIFY_BODIES = bodies({"user_id": user_ids, "signature": signatures})
DESCRIPTION_BODIES = st.one_of(
    json_bytes(json_values),
    st.binary(max_size=200),
    json_bytes(st.lists(st.text(max_size=30), max_size=5)),
    json_bytes(st.lists(st.text(max_size=30), min_size=1, max_size=5)),
    json_bytes(st.lists(json_values, max_size=3)),
)
_query = st.text(max_size=30) | json_values
FORWARD_BODIES = st.one_of(
    bodies({"type": st.just("forward") | json_values, "query": _query}),
    bodies({"type": st.just("forward") | json_values, "message": _query}),
)


@pytest_twisted.ensureDeferred
async def test_register_never_fails_on_any_body(rest):
    @REST
    @given(body=REGISTER_BODIES)
    def prop(body):
        code, answer = post(rest, "/auth/register", body)
        assert_no_server_error(code, answer, body)
        assert code in (201, 400, 409), (code, answer)

    await check(prop)


@pytest_twisted.ensureDeferred
async def test_login_challenge_never_fails_on_any_body(rest):
    @REST
    @given(body=LOGIN_BODIES)
    def prop(body):
        code, answer = post(rest, "/auth/login", body)
        assert_no_server_error(code, answer, body)
        assert code in (200, 400), (code, answer)
        if code == 200:
            assert set(answer) == {"challenge"}

    await check(prop)


@pytest_twisted.ensureDeferred
async def test_login_verify_never_fails_on_any_body(rest):
    @REST
    @given(body=VERIFY_BODIES, with_challenge=st.booleans())
    def prop(body, with_challenge):
        try:
            user_id = json.loads(body).get("user_id")
        except (ValueError, AttributeError):
            user_id = None
        if with_challenge and isinstance(user_id, str) and user_id:
            # An outstanding challenge takes the request past the first check.
            code, answer = post(
                rest, "/auth/login", json.dumps({"user_id": user_id}).encode()
            )
            assert_no_server_error(code, answer, user_id)
        code, answer = post(rest, "/auth/login?verify=true", body)
        assert_no_server_error(code, answer, body)
        assert code in (400, 401), (code, answer)

    await check(prop)


@pytest_twisted.ensureDeferred
async def test_login_verify_for_a_real_user_never_fails(rest):
    @REST
    @given(signature=signatures)
    def prop(signature):
        user_id = rest.ident.user_id
        code, _ = post(rest, "/auth/login", json.dumps({"user_id": user_id}).encode())
        assert code == 200
        body = json.dumps({"user_id": user_id, "signature": signature}).encode()
        code, answer = post(rest, "/auth/login?verify=true", body)
        assert_no_server_error(code, answer, body)
        assert code in (400, 401), (code, answer)

    await check(prop)


@pytest_twisted.ensureDeferred
async def test_descriptions_never_fail_on_any_body(rest):
    @REST
    @given(body=DESCRIPTION_BODIES)
    def prop(body):
        code, answer = post(rest, "/user/descriptions", body, auth=True)
        assert_no_server_error(code, answer, body)
        assert code in (200, 400), (code, answer)
        if code == 200:
            code, stored = blocking(
                get(rest.server, f"/user/descriptions/{rest.ident.user_id}")
            )
            assert code == 200 and stored == json.loads(body)

    await check(prop)


@pytest_twisted.ensureDeferred
async def test_direct_message_never_fails_on_any_body(rest):
    @REST
    @given(body=FORWARD_BODIES)
    def prop(body):
        code, answer = post(rest, "/direct-message/", body, auth=True)
        if code == 504:
            # PROTOCOL.md's one 5xx: a valid request reached the connected
            # client, which never answers.  It is the JSON error too.
            request = json.loads(body)
            query = request.get("query", request.get("message"))
            assert request["type"] == "forward" and isinstance(query, str) and query
            assert answer == {
                "error": True,
                "message": "No answer from your client in time",
            }
            return
        assert_no_server_error(code, answer, body)
        assert code == 400, (code, answer)

    await check(prop)


@pytest_twisted.ensureDeferred
async def test_without_a_token_or_with_junk_bodies_nothing_fails(rest):
    @REST
    @given(
        path=st.sampled_from(["/auth/register", "/auth/login", "/user/descriptions"]),
        body=st.binary(max_size=100),
    )
    def prop(path, body):
        code, answer = post(rest, path, body)
        assert_no_server_error(code, answer, (path, body))

    await check(prop)


@pytest_twisted.ensureDeferred
async def test_get_with_any_user_id_in_the_path_never_fails(rest):
    @REST
    @given(
        prefix=st.sampled_from(
            ["/auth/users/", "/auth/check-userid/", "/user/descriptions/"]
        ),
        # (A '/' makes '//' in the path: see test_double_slash_paths_...)
        segment=st.text(
            st.characters(exclude_categories=("Cs",), exclude_characters="/"),
            min_size=1,
            max_size=60,
        ),
    )
    def prop(prefix, segment):
        assume(segment not in (".", ".."))
        code, answer = blocking(get(rest.server, prefix + quote(segment, safe="")))
        assert_no_server_error(code, answer, (prefix, segment))
        assert code in (200, 404), (code, answer)

    await check(prop)


@pytest_twisted.ensureDeferred
async def test_double_slash_paths_get_404_or_a_redirect_with_a_location(rest):
    for path in ("/auth/users/%2Fx", "/auth/users//x", "/auth//check-userid/x"):
        response = await rest.server.http.get(rest.server.url(path))
        await response.content()
        if 300 <= response.code < 400:
            assert response.headers.getRawHeaders(b"location"), (path, response.code)
        else:
            assert response.code == 404, (path, response.code)
