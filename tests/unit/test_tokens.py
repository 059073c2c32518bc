"""TokenIssuer: HS256 pinned, exp required, time from the injected clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from dkserver.auth.tokens import InvalidToken, KeyRing, TokenIssuer, key_id

SECRET = b"k" * 32
START = 1_750_000_000.25


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(START)
    return clock


@pytest.fixture
def issuer(clock: Clock) -> TokenIssuer:
    return TokenIssuer(SECRET, clock)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict, claims: dict, signature: bytes = b"") -> str:
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(claims).encode()),
            b64url(signature),
        ]
    )


def valid_claims(**extra: object) -> dict:
    return {"user_id": "alice", "exp": int(START) + 3600, **extra}


def test_roundtrip_returns_user_id(issuer: TokenIssuer) -> None:
    token = issuer.issue("alice")
    assert issuer.verify(token) == "alice"


def test_issued_claims_are_user_id_exp_24h_iat_jti_iss_and_kid(
    issuer: TokenIssuer, clock: Clock
) -> None:
    token = issuer.issue("alice")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256"
    assert header["kid"] == key_id(SECRET)
    claims = jwt.decode(
        token, SECRET, algorithms=["HS256"], options={"verify_exp": False}
    )
    jti = claims.pop("jti")
    assert isinstance(jti, str) and len(jti) >= 16
    assert claims == {
        "user_id": "alice",
        "exp": int(START) + 86400,
        "iat": math.floor(START * 1000) / 1000,
        "iss": "dkserver",
    }
    again = jwt.decode(issuer.issue("alice"), options={"verify_signature": False})
    assert again["jti"] != jti


def test_token_from_original_go_server_layout_verifies(issuer: TokenIssuer) -> None:
    # The Go server signs {"user_id", "exp"} with no iat.
    token = jwt.encode(valid_claims(), SECRET, algorithm="HS256")
    assert issuer.verify(token) == "alice"


def test_token_expires_after_lifetime(issuer: TokenIssuer, clock: Clock) -> None:
    token = issuer.issue("alice")
    clock.advance(86400 - 1)
    assert issuer.verify(token) == "alice"
    clock.advance(1)
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(token)


def test_alg_none_is_rejected(issuer: TokenIssuer) -> None:
    token = forge({"alg": "none", "typ": "JWT"}, valid_claims())
    with pytest.raises(InvalidToken, match="algorithm"):
        issuer.verify(token)


def test_alg_none_uppercase_and_unsigned_hs256_are_rejected(
    issuer: TokenIssuer,
) -> None:
    with pytest.raises(InvalidToken):
        issuer.verify(forge({"alg": "None"}, valid_claims()))
    with pytest.raises(InvalidToken):
        issuer.verify(forge({"alg": "HS256"}, valid_claims()))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_hs512_with_the_same_secret_is_rejected(issuer: TokenIssuer) -> None:
    token = jwt.encode(valid_claims(), SECRET, algorithm="HS512")
    with pytest.raises(InvalidToken, match="algorithm"):
        issuer.verify(token)


def test_rs256_token_is_rejected(issuer: TokenIssuer) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(valid_claims(), private, algorithm="RS256")
    with pytest.raises(InvalidToken, match="algorithm"):
        issuer.verify(token)


def test_key_confusion_hmac_over_public_pem_is_rejected(clock: Clock) -> None:
    # Classic confusion: the attacker knows an RSA/EC public key the server
    # might treat as an HMAC secret and signs an HS256/RS256 token with it.
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    issuer = TokenIssuer(pem, clock)
    es256 = jwt.encode(valid_claims(), private, algorithm="ES256")
    with pytest.raises(InvalidToken):
        issuer.verify(es256)
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(valid_claims()).encode())
    mac = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    hs256_over_pem = f"{header}.{payload}.{b64url(mac)}"
    with pytest.raises(InvalidToken):
        issuer.verify(hs256_over_pem)


def test_missing_exp_is_rejected(issuer: TokenIssuer) -> None:
    token = jwt.encode({"user_id": "alice"}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="no expiry"):
        issuer.verify(token)


@pytest.mark.parametrize("exp", ["9999999999", None, True, [1]])
def test_non_numeric_exp_is_rejected(issuer: TokenIssuer, exp: object) -> None:
    claims = {"user_id": "alice", "exp": exp}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        issuer.verify(token)


@pytest.mark.parametrize("user_id", [None, 42, "", ["alice"], {"id": "alice"}])
def test_missing_or_non_string_user_id_is_rejected(
    issuer: TokenIssuer, user_id: object
) -> None:
    claims = {"exp": int(START) + 3600}
    if user_id is not None:
        claims["user_id"] = user_id
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="user id"):
        issuer.verify(token)


def test_future_nbf_is_rejected_by_the_injected_clock(
    issuer: TokenIssuer, clock: Clock
) -> None:
    token = jwt.encode(valid_claims(nbf=int(START) + 10), SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken, match="not valid yet"):
        issuer.verify(token)
    clock.advance(10)
    assert issuer.verify(token) == "alice"


def test_clock_far_from_wall_time_is_what_counts() -> None:
    # A token "expired" by wall time still verifies if the injected clock says so.
    past = Clock()
    past.advance(1000)
    issuer = TokenIssuer(SECRET, past)
    token = issuer.issue("alice")
    assert issuer.verify(token) == "alice"


def test_tampered_payload_is_rejected(issuer: TokenIssuer) -> None:
    header, _, signature = issuer.issue("alice").split(".")
    payload = b64url(json.dumps(valid_claims(user_id="mallory")).encode())
    with pytest.raises(InvalidToken, match="signature"):
        issuer.verify(f"{header}.{payload}.{signature}")


def test_wrong_secret_is_rejected(issuer: TokenIssuer, clock: Clock) -> None:
    other = TokenIssuer(b"z" * 32, clock)
    with pytest.raises(InvalidToken, match="key is not known"):
        issuer.verify(other.issue("alice"))
    # The same, claiming our kid: the signature decides.
    forged = jwt.encode(
        {"user_id": "alice", "exp": START + 60, "iss": "dkserver"},
        b"z" * 32,
        algorithm="HS256",
        headers={"kid": key_id(SECRET)},
    )
    with pytest.raises(InvalidToken, match="signature"):
        issuer.verify(forged)


def test_rotated_secret_verifies_old_tokens_until_the_grace_ends(
    issuer: TokenIssuer, clock: Clock
) -> None:
    old = issuer.issue("alice")
    legacy = jwt.encode({"user_id": "bob", "exp": START + 7200}, SECRET, "HS256")
    new_secret = b"n" * 32
    issuer.use_keys(KeyRing(new_secret, [(SECRET, START + 3600)]))
    new = issuer.issue("alice")
    assert jwt.get_unverified_header(new)["kid"] == key_id(new_secret)
    assert issuer.verify(old) == "alice"
    assert issuer.verify(legacy) == "bob"  # no kid: any secret in the ring
    assert issuer.verify(new) == "alice"
    clock.advance(3600)
    with pytest.raises(InvalidToken, match="key is not known"):
        issuer.verify(old)
    with pytest.raises(InvalidToken, match="signature"):
        issuer.verify(legacy)
    assert issuer.verify(new) == "alice"


def test_token_of_another_issuer_is_rejected(clock: Clock) -> None:
    ours = TokenIssuer(SECRET, clock, issuer="a.example")
    theirs = TokenIssuer(SECRET, clock, issuer="b.example")
    with pytest.raises(InvalidToken, match="issuer"):
        ours.verify(theirs.issue("alice"))


def test_verify_claims_gives_the_issue_instant(issuer: TokenIssuer) -> None:
    claims = issuer.verify_claims(issuer.issue("alice"))
    assert claims.user_id == "alice"
    assert claims.iat == math.floor(START * 1000) / 1000


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b.c",
        "a.b",
        "...",
        "Bearer x",
        "é.é.é",
        "x" * 5000,
        None,
        1,
        b"a",
    ],
)
def test_garbage_is_rejected(issuer: TokenIssuer, token: object) -> None:
    with pytest.raises(InvalidToken):
        issuer.verify(token)


def test_non_object_payload_is_rejected(issuer: TokenIssuer) -> None:
    header = b64url(json.dumps({"alg": "HS256"}).encode())
    payload = b64url(b"[1, 2]")
    mac = hmac.new(SECRET, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken):
        issuer.verify(f"{header}.{payload}.{b64url(mac)}")


@given(st.text(max_size=300))
def test_verify_raises_only_invalid_token_on_arbitrary_text(text: str) -> None:
    issuer = TokenIssuer(SECRET, Clock())
    with pytest.raises(InvalidToken):
        issuer.verify(text)


def test_invalid_token_reason_never_contains_the_token(issuer: TokenIssuer) -> None:
    token = issuer.issue("alice")[:-3] + "AAA"
    with pytest.raises(InvalidToken) as info:
        issuer.verify(token)
    assert token not in str(info.value) and "alice" not in info.value.reason


def test_short_secret_is_refused(clock: Clock) -> None:
    with pytest.raises(ValueError):
        TokenIssuer(b"short", clock)
    with pytest.raises(ValueError):
        TokenIssuer("a str secret" * 4, clock)  # type: ignore[arg-type]


@pytest.mark.parametrize("user_id", ["alice", "zoë"])
def test_issued_token_is_byte_for_byte_what_pyjwt_encodes(clock, monkeypatch, user_id):
    # issue() encodes by hand; it must be the token jwt.encode would make.
    monkeypatch.setattr("secrets.token_urlsafe", lambda n: "fixed-jti")
    issuer = TokenIssuer(SECRET, clock, issuer="dk-test")
    token = issuer.issue(user_id)
    claims = {
        "user_id": user_id,
        "exp": int(START + issuer.lifetime),
        "iat": math.floor(START * 1000) / 1000,
        "jti": "fixed-jti",
        "iss": "dk-test",
    }
    expected = jwt.encode(
        claims, SECRET, algorithm="HS256", headers={"kid": key_id(SECRET)}
    )
    assert token == expected
    assert issuer.verify_claims(token).user_id == user_id


def test_issue_signs_with_the_current_secret_after_a_rotation(clock):
    issuer = TokenIssuer(SECRET, clock)
    new = b"n" * 32
    issuer.use_keys(KeyRing(new, [(SECRET, START + 60)]))
    token = issuer.issue("alice")
    assert jwt.get_unverified_header(token)["kid"] == key_id(new)
    jwt.decode(token, new, algorithms=["HS256"], options={"verify_exp": False})
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})


# -- this server's own tokens, verified without pyjwt --------------------------


def _own_token(claims: dict, secret: bytes = SECRET) -> str:
    """A token in exactly this server's header, signed with ``secret``."""
    head = TokenIssuer(secret, Clock())._head.decode("ascii")
    payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
    mac = hmac.digest(secret, f"{head}.{payload}".encode(), "sha256")
    return f"{head}.{payload}.{b64url(mac)}"


def _slow(issuer: TokenIssuer, token: str) -> object:
    """What the pyjwt path answers for ``token``: claims or the error reason."""
    issuer._own_heads = {}
    try:
        return issuer.verify_claims(token)
    except InvalidToken as e:
        return e.reason


def _fast(issuer: TokenIssuer, token: str) -> object:
    try:
        return issuer.verify_claims(token)
    except InvalidToken as e:
        return e.reason


def test_own_tokens_are_verified_without_pyjwt(issuer, monkeypatch) -> None:
    token = issuer.issue("alice")
    monkeypatch.setattr(jwt, "decode", None)
    monkeypatch.setattr(jwt, "get_unverified_header", None)
    claims = issuer.verify_claims(token)
    assert claims.user_id == "alice" and claims.iat == math.floor(START * 1000) / 1000


@pytest.mark.parametrize(
    "claims",
    [
        valid_claims(iss="dkserver", jti="j", iat=START),
        valid_claims(iss="dkserver", aud="elsewhere"),  # pyjwt: invalid audience
        valid_claims(iss="dkserver", sub=5),  # pyjwt: sub must be a string
        valid_claims(iss="dkserver", jti=5),  # pyjwt: jti must be a string
        valid_claims(iss="other"),
        valid_claims(iss="dkserver", exp="soon"),
        valid_claims(iss="dkserver", exp=int(START) - 1),
        valid_claims(iss="dkserver", nbf=START + 60),
        valid_claims(iss="dkserver", user_id=""),
        {"iss": "dkserver", "user_id": "alice"},
    ],
)
def test_own_header_answers_as_pyjwt_does(clock, claims) -> None:
    token = _own_token(claims)
    fast = _fast(TokenIssuer(SECRET, clock), token)
    assert fast == _slow(TokenIssuer(SECRET, clock), token)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"),  # signature
        lambda t: t + ".",
        lambda t: t.rsplit(".", 1)[0],
        lambda t: t.replace(".", ".e30.", 1),  # another payload
        lambda t: t[:-1] + "é",
    ],
)
def test_a_mangled_own_token_gets_pyjwts_answer(clock, mangle) -> None:
    token = mangle(TokenIssuer(SECRET, clock).issue("alice"))
    fast = _fast(TokenIssuer(SECRET, clock), token)
    assert fast == _slow(TokenIssuer(SECRET, clock), token)
    assert isinstance(fast, str)  # refused


def test_own_header_of_a_retired_key_is_refused(clock) -> None:
    old = TokenIssuer(b"o" * 32, clock).issue("alice")
    ring = KeyRing(SECRET, previous=[(b"o" * 32, START + 10)])
    issuer = TokenIssuer(ring, clock)
    assert issuer.verify(old) == "alice"
    clock.advance(11)
    with pytest.raises(InvalidToken, match="key is not known"):
        issuer.verify(old)
