"""Handshake authentication: token lookup, JWT verification, origin rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from wsnode.auth import Authenticator, mint_token, token_from
from wsnode.errors import AuthError, SettingsError
from wsnode.settings import NodeSettings

SECRET = "0123456789abcdef0123456789abcdef-test-secret"
OTHER_SECRET = "fedcba9876543210fedcba9876543210-other-secret"


def hs_auth(**settings: Any) -> Authenticator:
    return Authenticator(NodeSettings(jwt_secret=SECRET, **settings))


def sign(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "alice", "exp": int(time.time()) + 3600, **extra}


def refused(auth: Authenticator, token: str, status: int = 401) -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.verify(token)
    assert info.value.status == status
    assert token not in str(info.value)
    assert token not in info.value.reason
    return info.value


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem_file(tmp_path: Path, private_key: Any, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


# -- token_from ---------------------------------------------------------------


def test_authorization_header_first() -> None:
    headers = {"Authorization": "Bearer from-header",
               "Sec-WebSocket-Protocol": "bearer, from-protocol"}
    assert token_from(headers, "/ws?token=from-query&access_token=from-access") == (
        "from-header", False)


def test_authorization_scheme_is_case_insensitive() -> None:
    assert token_from({"Authorization": "bearer  tok "}, "/ws") == ("tok", False)


def test_query_token_before_access_token() -> None:
    headers = {"Sec-WebSocket-Protocol": "bearer, from-protocol"}
    assert token_from(headers, "/ws?access_token=from-access&token=from-query") == (
        "from-query", False)


def test_access_token_before_subprotocol() -> None:
    headers = {"Sec-WebSocket-Protocol": "bearer, from-protocol"}
    assert token_from(headers, "/ws?access_token=from-access") == ("from-access", False)


def test_subprotocol_last_and_flagged() -> None:
    assert token_from({"Sec-WebSocket-Protocol": "bearer, tok.en.x"}, "/ws") == (
        "tok.en.x", True)


def test_non_bearer_authorization_is_skipped() -> None:
    headers = {"Authorization": "Basic dXNlcjpwYXNz"}
    assert token_from(headers, "/ws?token=q") == ("q", False)
    assert token_from({"Authorization": "Bearer "}, "/ws?token=q") == ("q", False)


@pytest.mark.parametrize("protocol", ["", "bearer", "chat, tok", "bearer,", "v1.json"])
def test_no_token(protocol: str) -> None:
    headers = {"Sec-WebSocket-Protocol": protocol} if protocol else {}
    assert token_from(headers, "/ws?token=&other=1") == (None, False)


# -- HS256 --------------------------------------------------------------------


def test_valid_token_gives_the_sub() -> None:
    identity = hs_auth().verify(sign(claims()))
    assert identity.user == "alice"
    assert identity.expires_at is not None
    assert identity.claims["sub"] == "alice"
    assert identity.via_subprotocol is False


def test_user_id_claim_is_the_fallback() -> None:
    token = sign({"user_id": "bob", "exp": int(time.time()) + 60})
    assert hs_auth().verify(token).user == "bob"


def test_sub_beats_user_id() -> None:
    assert hs_auth().verify(sign(claims(user_id="bob"))).user == "alice"


def test_custom_user_claim() -> None:
    auth = hs_auth(user_claim="uid")
    assert auth.verify(sign(claims(uid="carol", sub="other"))).user == "carol"
    refused(auth, sign(claims(user_id="alice")))  # no fallback for custom claims


def test_numeric_user_id_becomes_a_string() -> None:
    exp = int(time.time()) + 60
    assert hs_auth().verify(sign({"sub": 42, "exp": exp})).user == "42"
    assert hs_auth().verify(sign({"user_id": 7, "exp": exp})).user == "7"


@pytest.mark.parametrize("user", [None, "", True, ["a"], "u" * 257])
def test_unusable_user_claim(user: Any) -> None:
    exp = int(time.time()) + 60
    err = refused(hs_auth(), sign({"sub": user, "exp": exp} if user is not None
                                  else {"x": 1, "exp": exp}))
    assert "sub" in err.reason


def test_expired_token() -> None:
    err = refused(hs_auth(), sign(claims(exp=int(time.time()) - 60)))
    assert err.reason == "token expired"


def test_wrong_secret() -> None:
    refused(hs_auth(), sign(claims(), OTHER_SECRET))


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", ""])
def test_malformed_token(token: str) -> None:
    with pytest.raises(AuthError) as info:
        hs_auth().verify(token)
    assert info.value.status == 401
    if token:
        assert token not in str(info.value)


def test_alg_none_is_refused() -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    refused(hs_auth(), f"{header}.{payload}.")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_unpinned_algorithm_is_refused_even_with_the_right_key() -> None:
    refused(hs_auth(), sign(claims(), SECRET, "HS512"))  # only HS256 is pinned


def test_audience_and_issuer_enforced_when_set() -> None:
    auth = hs_auth(jwt_audience="wsnode", jwt_issuer="https://issuer.example")
    good = claims(aud="wsnode", iss="https://issuer.example")
    assert auth.verify(sign(good)).user == "alice"
    refused(auth, sign({**good, "aud": "other"}))
    refused(auth, sign({**good, "iss": "https://evil.example"}))
    refused(auth, sign({k: v for k, v in good.items() if k != "aud"}))
    refused(auth, sign({k: v for k, v in good.items() if k != "iss"}))


def test_audience_not_checked_when_unset() -> None:
    assert hs_auth().verify(sign(claims(aud="anything"))).user == "alice"


def test_mint_token_round_trips() -> None:
    token = mint_token(SECRET, "dave", 60, audience="a", issuer="i")
    identity = hs_auth(jwt_audience="a", jwt_issuer="i").verify(token)
    assert identity.user == "dave"
    assert identity.expires_at == pytest.approx(time.time() + 60, abs=5)


def test_mint_token_with_past_now_is_expired() -> None:
    token = mint_token(SECRET, "dave", 60, now=time.time() - 3600)
    assert refused(hs_auth(), token).reason == "token expired"


# -- construction -------------------------------------------------------------


def test_short_secret_is_a_settings_error() -> None:
    short = "s" * 31
    with pytest.raises(SettingsError) as info:
        Authenticator(NodeSettings(jwt_secret=short))
    assert "WSNODE_JWT_SECRET" in str(info.value)
    assert short not in str(info.value)
    Authenticator(NodeSettings(jwt_secret="s" * 32))  # 32 bytes is enough for HS256


def test_hs512_needs_a_64_byte_secret() -> None:
    with pytest.raises(SettingsError):
        Authenticator(NodeSettings(jwt_secret="s" * 63, jwt_algorithms=["HS512"]))


def test_no_key_and_not_insecure_is_a_settings_error() -> None:
    with pytest.raises(SettingsError) as info:
        Authenticator(NodeSettings())
    assert "WSNODE_JWT_SECRET" in str(info.value)


def test_unreadable_public_key_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="WSNODE_JWT_PUBLIC_KEY_FILE"):
        Authenticator(NodeSettings(jwt_public_key_file=tmp_path / "missing.pem"))
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(SettingsError, match="WSNODE_JWT_PUBLIC_KEY_FILE"):
        Authenticator(NodeSettings(jwt_public_key_file=tmp_path / "bad.pem"))


# -- RS256 / ES256 ------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_rs256(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = Authenticator(NodeSettings(jwt_public_key_file=pem_file(tmp_path, rsa_key, "rs.pem")))
    assert auth.verify(sign(claims(), rsa_key, "RS256")).user == "alice"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(auth, sign(claims(), other, "RS256"))
    refused(auth, sign(claims(), SECRET, "HS256"))


def test_es256(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    auth = Authenticator(NodeSettings(jwt_public_key_file=pem_file(tmp_path, ec_key, "es.pem")))
    assert auth.verify(sign(claims(), ec_key, "ES256")).user == "alice"
    refused(auth, sign(claims(), ec.generate_private_key(ec.SECP256R1()), "ES256"))


def test_explicit_asymmetric_algorithms(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey,
                                        rsa_key: rsa.RSAPrivateKey) -> None:
    auth = Authenticator(NodeSettings(jwt_public_key_file=pem_file(tmp_path, rsa_key, "k.pem"),
                                      jwt_algorithms=["RS256"]))
    assert auth.verify(sign(claims(), rsa_key, "RS256")).user == "alice"
    refused(auth, sign(claims(), rsa_key, "RS512"))  # not pinned


def test_key_confusion_is_refused(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """An HS256 token signed with the public key PEM as the HMAC secret."""
    path = pem_file(tmp_path, rsa_key, "rs.pem")
    auth = Authenticator(NodeSettings(jwt_public_key_file=path))
    pem = path.read_bytes()
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    mac = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    refused(auth, f"{header}.{payload}.{b64url(mac)}")


# -- authenticate -------------------------------------------------------------


def test_authenticate_reads_the_token_from_the_handshake() -> None:
    token = sign(claims())
    identity = hs_auth().authenticate({"Sec-WebSocket-Protocol": f"bearer, {token}"}, "/ws")
    assert identity.user == "alice"
    assert identity.via_subprotocol is True
    assert hs_auth().authenticate({}, f"/ws?token={token}").via_subprotocol is False


def test_authenticate_without_token() -> None:
    with pytest.raises(AuthError) as info:
        hs_auth().authenticate({}, "/ws?user=alice")
    assert info.value.status == 401


def test_insecure_accepts_user_param() -> None:
    auth = Authenticator(NodeSettings(), insecure=True)
    assert auth.authenticate({}, "/ws?user=alice").user == "alice"
    assert auth.authenticate({}, "/ws?user=%E3%83%A6%20b").user == "ユ b"
    with pytest.raises(AuthError) as info:
        auth.authenticate({}, "/ws")
    assert info.value.status == 401
    with pytest.raises(AuthError):
        auth.authenticate({}, "/ws?user=" + "u" * 257)


def test_insecure_with_a_secret_still_verifies_tokens() -> None:
    auth = Authenticator(NodeSettings(jwt_secret=SECRET), insecure=True)
    assert auth.authenticate({}, f"/ws?token={sign(claims())}").user == "alice"
    assert auth.authenticate({}, "/ws?user=bob").user == "bob"
    with pytest.raises(AuthError):
        auth.authenticate({}, f"/ws?token={sign(claims(), OTHER_SECRET)}&user=bob")


# -- origins ------------------------------------------------------------------


def test_no_origin_header_is_allowed() -> None:
    hs_auth().check_origin({"Host": "pod.example:8765"})


def test_public_origins_are_same_origin_by_scheme_host_and_port() -> None:
    auth = hs_auth(public_origins=["https://pod.example:8765", "wss://chat.example.com"])
    for origin in ("https://pod.example:8765", "https://POD.example:8765/",
                   "https://chat.example.com", "https://chat.example.com:443"):
        auth.check_origin({"Origin": origin, "Host": "pod.example:8765"})
    for origin in ("http://pod.example:8765",  # another scheme
                   "https://pod.example", "https://pod.example:8766",  # another port
                   "http://chat.example.com", "https://evil.example", "null", "garbage"):
        with pytest.raises(AuthError) as info:
            auth.check_origin({"Origin": origin, "Host": "pod.example:8765"})
        assert info.value.status == 403, origin


def test_the_host_header_is_not_trusted() -> None:
    """DNS rebinding: a hostile page under its own name reaches the pod, and its Host
    header names it too. Without allowed or public origins, every page is refused."""
    auth = hs_auth()
    for origin, host in (("http://rebind.evil:8765", "rebind.evil:8765"),
                         ("https://pod.example:8765", "pod.example:8765")):
        with pytest.raises(AuthError) as info:
            auth.check_origin({"Origin": origin, "Host": host})
        assert info.value.status == 403


def test_explicit_allowlist_with_glob() -> None:
    auth = hs_auth(allowed_origins=["https://app.example.org", "https://*.example.com"])
    for origin in ("https://app.example.org", "https://a.example.com",
                   "https://a.b.example.com", "HTTPS://X.EXAMPLE.COM"):
        auth.check_origin({"Origin": origin, "Host": "pod:8765"})
    for origin in ("https://example.com", "http://a.example.com", "https://example.com.evil",
                   "https://app.example.org.evil", "https://pod:8765"):
        with pytest.raises(AuthError) as info:
            auth.check_origin({"Origin": origin, "Host": "pod:8765"})
        assert info.value.status == 403


def test_star_allows_every_origin() -> None:
    auth = hs_auth(allowed_origins=["*"])
    for origin in ("https://anything.example", "http://localhost:3000", "null"):
        auth.check_origin({"Origin": origin, "Host": "pod:8765"})


def test_token_without_exp_is_refused() -> None:
    err = refused(hs_auth(), sign({"sub": "mallory"}))
    assert "exp" in err.reason
