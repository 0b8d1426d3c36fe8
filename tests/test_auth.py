"""Who may call (``docs/api.md``): every attack answered 401/403 with its code and nothing
leaked, while a legitimate session beside them is transcribed as on a quiet gateway."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import aiohttp
import jwt
import pytest

from tests.audio_files import AUDIO_DIR, clip
from tests.conftest import Gateway, StartGateway, direct_finals
from tests.gateway_client import Received, follow_sse, frames, paced
from tests.test_cli import run_cli
from tests.timing import budget

KEY = "ci-secret-0123456789abcdef"
OTHER_KEY = "other-secret-fedcba9876543210"
TOKEN_SECRET = "token-secret-for-tests-" + "0123456789abcdef" * 4
KEYS = [f"ci:{KEY}", f"other:{OTHER_KEY}"]
SPEECH = clip("librivox-sns-0880")


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def forged(secret: str = TOKEN_SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    """A token as an attacker would make it: our claim names, their choice of key and alg."""
    now = int(time.time())
    body: dict[str, Any] = {"iat": now, "exp": now + 60, "scope": "session:read", "kid": "ci"}
    body.update(claims)
    return jwt.encode(body, secret, algorithm=algorithm)


def alg_rs256_confusion(**claims: Any) -> str:
    """A token whose header says RS256 but which is HMAC-signed with our secret: the classic
    algorithm-confusion forgery, refused because decoding pins HS256."""
    now = int(time.time())
    body = {"iat": now, "exp": now + 60, "scope": "session:read", "kid": "ci", **claims}
    signed = jwt.encode(body, TOKEN_SECRET, algorithm="HS256")
    _, payload, _ = signed.split(".")
    header = base64.urlsafe_b64encode(b'{"alg":"RS256","typ":"JWT"}').rstrip(b"=").decode()
    mac = hmac.new(TOKEN_SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    signature = base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


def alg_none(**claims: Any) -> str:
    now = int(time.time())
    body = {"iat": now, "exp": now + 60, "scope": "session:read", "kid": "ci", **claims}
    return jwt.encode(body, None, algorithm="none")


async def auth_gateway(start_gateway: StartGateway, **overrides: Any) -> Gateway:
    return await start_gateway(api_keys=KEYS, token_secret=TOKEN_SECRET, **overrides)


async def create(http: aiohttp.ClientSession, gw: Gateway, key: str = KEY) -> dict[str, Any]:
    async with http.post(f"{gw.base}/sessions", json={}, headers=bearer(key)) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 201, body
        return body


async def refused(resp: aiohttp.ClientResponse, status: int, code: str) -> None:
    """``resp`` is the documented refusal and carries nothing but the error."""
    body = await resp.json()
    assert (resp.status, body["error"]["code"]) == (status, code), body
    assert set(body) == {"error"}
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_attacks_are_refused_with_their_code_while_a_legitimate_session_streams(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await auth_gateway(start_gateway)
    legit = await create(http, gw)
    victim = await create(http, gw)  # session "B": what the attacks are aimed at
    b = victim["session_id"]
    tokens = legit["tokens"]

    # The legitimate session: audio in over the WebSocket with its publish token as a
    # subprotocol (as a browser would), events out over SSE with its read token in the query.
    got = Received()
    sse = asyncio.create_task(
        follow_sse(http, f"{legit['stream_url']}?access_token={tokens['read']}", got)
    )
    producer = await http.ws_connect(legit["ws_url"], protocols=("bearer", tokens["publish"]))
    assert producer.protocol == "bearer"

    async def stream() -> None:
        async for frame in paced(frames(SPEECH.pcm, 16_000), 0.02, 4.0):
            await producer.send_bytes(frame)
        await producer.send_json({"type": "close"})

    streaming = asyncio.create_task(stream())

    url = f"{gw.base}/sessions/{b}"
    a_read, a_publish = tokens["read"], tokens["publish"]
    rows: list[tuple[str, dict[str, str], str, str, int, str]] = [
        # (what, headers, method, path, status, code)
        ("no credentials", {}, "GET", url, 401, "unauthorized"),
        ("no credentials, transcript", {}, "GET", f"{url}/transcript", 401, "unauthorized"),
        ("no credentials, metrics", {}, "GET", f"{gw.base}/metrics", 401, "unauthorized"),
        ("unknown key", bearer("not-a-key"), "GET", url, 401, "unauthorized"),
        ("key in Basic form", {"Authorization": f"Basic {KEY}"}, "GET", url, 401, "unauthorized"),
        ("key without scheme", {"Authorization": KEY}, "GET", url, 401, "unauthorized"),
        ("key in X-API-Key", {"X-API-Key": KEY}, "GET", url, 401, "unauthorized"),
        ("JWT of another secret", bearer(forged("x" * 32, sid=b)), "GET", url, 401, "unauthorized"),
        ("alg none", bearer(alg_none(sid=b)), "GET", url, 401, "unauthorized"),
        ("alg HS512", bearer(forged(algorithm="HS512", sid=b)), "GET", url, 401, "unauthorized"),
        ("alg RS256", bearer(alg_rs256_confusion(sid=b)), "GET", url, 401, "unauthorized"),
        (
            "expired",
            bearer(forged(sid=b, iat=int(time.time()) - 600, exp=int(time.time()) - 60)),
            "GET",
            url,
            401,
            "unauthorized",
        ),
        (
            "not yet valid",
            bearer(forged(sid=b, iat=int(time.time()) + 600, exp=int(time.time()) + 900)),
            "GET",
            url,
            401,
            "unauthorized",
        ),
        ("unknown kid", bearer(forged(sid=b, kid="gone")), "GET", url, 401, "unauthorized"),
        ("A's read token on B", bearer(a_read), "GET", url, 403, "forbidden"),
        (
            "A's read token on B's transcript",
            bearer(a_read),
            "GET",
            f"{url}/transcript",
            403,
            "forbidden",
        ),
        ("A's read token on B's SSE", bearer(a_read), "GET", f"{url}/stream", 403, "forbidden"),
        (
            "A's publish token on B's audio",
            bearer(a_publish),
            "POST",
            f"{url}/audio",
            403,
            "forbidden",
        ),
        ("A's publish token deleting B", bearer(a_publish), "DELETE", url, 403, "forbidden"),
        (
            "a read token posting audio",
            bearer(a_read),
            "POST",
            f"{legit['audio_url']}",
            403,
            "forbidden",
        ),
        (
            "a read token deleting",
            bearer(a_read),
            "DELETE",
            f"{gw.base}/sessions/{legit['session_id']}",
            403,
            "forbidden",
        ),
        (
            "a publish token minting",
            bearer(a_publish),
            "POST",
            f"{gw.base}/tokens",
            403,
            "forbidden",
        ),
        (
            "a publish token creating",
            bearer(a_publish),
            "POST",
            f"{gw.base}/sessions",
            403,
            "forbidden",
        ),
        ("a token reading metrics", bearer(a_read), "GET", f"{gw.base}/metrics", 403, "forbidden"),
    ]
    for what, headers, method, target, status, code in rows:
        body: dict[str, Any] = {"scope": ["session:read"], "session_id": b}
        async with http.request(
            method,
            target,
            headers={"Content-Type": "application/json", **headers},
            json=body if target.endswith("/tokens") else None,
            data=b"\0\0" * 160 if target.endswith("/audio") else None,
        ) as resp:
            try:
                await refused(resp, status, code)
            except AssertionError as exc:
                raise AssertionError(f"{what}: {exc}") from None

    # WebSockets are refused at the handshake with the same statuses: nothing ever opens.
    ws_rows: list[tuple[str, dict[str, Any], str, int]] = [
        ("no credentials", {}, "", 401),
        ("A's read token subscribing to B", {"headers": bearer(a_read)}, "", 403),
        ("A's publish token feeding B", {"protocols": ("bearer", a_publish)}, "?events=false", 403),
        ("alg none as subprotocol", {"protocols": ("bearer", alg_none(sid=b))}, "", 401),
        ("a key as a token subprotocol", {"protocols": ("token", "not-a-key")}, "", 401),
    ]
    for what, kwargs, query, status in ws_rows:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
            await http.ws_connect(f"{victim['ws_url']}{query}", **kwargs)
        assert refusal.value.status == status, what
    # A read token may subscribe, not feed: its audio is answered to it alone.
    read_only = await http.ws_connect(legit["ws_url"], protocols=("bearer", tokens["read"]))
    await read_only.send_bytes(b"\0\0" * 160)
    msg = await read_only.receive_json(timeout=30)
    while msg["event_type"] != "error":
        msg = await read_only.receive_json(timeout=30)
    assert msg["data"]["code"] == "forbidden"
    assert "seq" not in msg
    await read_only.close()

    # The same key in Deepgram's form is served.
    async with http.get(url, headers={"Authorization": f"Token {KEY}"}) as resp:
        assert resp.status == 200
    # B never heard a thing, and the legitimate session is whole.
    async with http.get(url, headers=bearer(KEY)) as resp:
        info = await resp.json()
    assert (info["audio_seconds"], info["last_seq"]) == (0, 0)
    await streaming
    await asyncio.wait_for(sse, budget(60))
    assert got.of_type("error") == []
    assert got.logged[-1]["event_type"] == "session_end"
    assert got.finals_text() == " ".join(f.text for f in direct_finals(SPEECH))


async def test_a_token_from_before_a_restart_with_a_random_secret_is_refused(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    first = await start_gateway(api_keys=KEYS)
    session = await create(http, first)
    again = await start_gateway(api_keys=KEYS)  # a new process: a new random token secret
    fresh = await create(http, again)
    stale = session["tokens"]["read"]
    async with http.get(
        f"{again.base}/sessions/{fresh['session_id']}", headers=bearer(stale)
    ) as resp:
        await refused(resp, 401, "unauthorized")
    async with http.get(
        f"{first.base}/sessions/{session['session_id']}", headers=bearer(stale)
    ) as resp:
        assert resp.status == 200


async def test_tokens_are_minted_by_keys_scoped_and_bounded(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await auth_gateway(start_gateway, token_max_ttl_s=120)
    session = await create(http, gw)
    sid = session["session_id"]

    async def mint(body: dict[str, Any], key: str = KEY) -> tuple[int, dict[str, Any]]:
        async with http.post(f"{gw.base}/tokens", json=body, headers=bearer(key)) as resp:
            return resp.status, await resp.json()

    status, issued = await mint({"scope": ["session:read"], "session_id": sid, "ttl_s": 60})
    assert status == 201
    assert (issued["token_type"], issued["expires_in"], issued["scope"]) == (
        "bearer",
        60,
        ["session:read"],
    )
    claims = jwt.decode(issued["access_token"], TOKEN_SECRET, algorithms=["HS256"])
    assert (claims["sid"], claims["kid"], claims["scope"]) == (sid, "ci", "session:read")
    async with http.get(
        f"{gw.base}/sessions/{sid}", headers=bearer(issued["access_token"])
    ) as resp:
        assert resp.status == 200

    bad: dict[str, Any]
    for bad in (
        {"scope": ["session:read"]},  # no session
        {"scope": ["session:read"], "session_id": sid, "ttl_s": 121},
        {"scope": ["admin"], "session_id": sid},
        {"scope": []},
    ):
        status, body = await mint(bad)
        assert (status, body["error"]["code"]) == (422, "invalid_config"), bad

    # A sessions:create token creates sessions, which count against the key that minted it.
    status, creator = await mint({"scope": ["sessions:create"], "ttl_s": 60})
    assert status == 201
    made = await create(http, gw, creator["access_token"])
    assert set(made["tokens"]) == {"publish", "read", "expires_in"}
    async with http.get(f"{gw.base}/metrics", headers=bearer(KEY)) as resp:
        text = await resp.text()
    assert 'stt_key_sessions{key="ci"} 2.0' in text


async def test_per_key_limits_answer_429_with_retry_after_and_spare_other_keys(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await auth_gateway(start_gateway, key_max_sessions=2, key_sessions_per_minute=3)

    async def post(key: str) -> aiohttp.ClientResponse:
        resp = await http.post(f"{gw.base}/sessions", json={}, headers=bearer(key))
        await resp.read()
        return resp

    first, second = await create(http, gw), await create(http, gw)
    held = await post(KEY)
    await refused(held, 429, "rate_limited")
    assert int(held.headers["Retry-After"]) >= 1
    assert (await post(OTHER_KEY)).status == 201  # another key is not held back

    async with http.delete(f"{gw.base}/sessions/{first['session_id']}", headers=bearer(KEY)):
        pass
    assert (await post(KEY)).status == 201  # a slot freed: the third creation this minute
    async with http.delete(f"{gw.base}/sessions/{second['session_id']}", headers=bearer(KEY)):
        pass
    fast = await post(KEY)  # a slot is free, but this would be the fourth within a minute
    await refused(fast, 429, "rate_limited")
    assert 1 <= int(fast.headers["Retry-After"]) <= 60


async def test_cors_preflight_is_answered_for_a_listed_origin_only(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    listed = "http://127.0.0.2:5173"
    gw = await auth_gateway(start_gateway, cors_origins=[listed])
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with http.options(f"{gw.base}/sessions", headers={"Origin": listed, **preflight}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == listed
        assert "AUTHORIZATION" in resp.headers["Access-Control-Allow-Headers"].upper()
        assert "Access-Control-Allow-Credentials" not in resp.headers
    async with http.options(
        f"{gw.base}/sessions", headers={"Origin": "http://evil.example", **preflight}
    ) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.post(
        f"{gw.base}/sessions", json={}, headers={"Origin": listed, **bearer(KEY)}
    ) as resp:
        assert resp.status == 201
        assert resp.headers["Access-Control-Allow-Origin"] == listed


async def test_secrets_and_tokens_never_leave(
    start_gateway: StartGateway, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    gw = await auth_gateway(start_gateway)
    seen: list[str] = []
    issued: list[str] = []

    async def call(method: str, path: str, **kwargs: Any) -> dict[str, Any] | None:
        async with http.request(method, f"{gw.base}{path}", **kwargs) as resp:
            text = await resp.text()
            seen.append(text)
            seen.extend(f"{k}: {v}" for k, v in resp.headers.items() if k != "Set-Cookie")
            return await resp.json() if resp.content_type == "application/json" else None

    session = await create(http, gw)
    issued += [session["tokens"]["publish"], session["tokens"]["read"]]
    sid = session["session_id"]
    async with http.post(  # the one answer a token may be in: its own minting
        f"{gw.base}/tokens",
        json={"scope": ["session:read"], "session_id": sid},
        headers=bearer(KEY),
    ) as resp:
        issued.append((await resp.json())["access_token"])
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/info", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/metrics", {"headers": bearer(KEY)}),
        ("GET", f"/sessions/{sid}?access_token={issued[1]}", {}),
        ("GET", f"/sessions/{sid}", {"headers": bearer(KEY[:-1])}),
        ("GET", f"/sessions/{sid}", {"headers": bearer(issued[0] + "x")}),
        ("POST", f"/sessions/{sid}/audio", {"headers": bearer(issued[1]), "data": b"\0\0"}),
        ("POST", "/sessions", {"headers": bearer(KEY), "json": {"config": {"engine": "nope"}}}),
        ("DELETE", f"/sessions/{sid}", {"headers": bearer(issued[0])}),
    ]
    for method, path, kwargs in requests:
        await call(method, path, **kwargs)
    ws = await http.ws_connect(session["ws_url"], protocols=("bearer", issued[0]))
    await ws.close()
    everything = "\n".join(seen + [r.getMessage() for r in caplog.records])
    for secret in [KEY, OTHER_KEY, TOKEN_SECRET, *issued]:
        assert secret not in everything
    assert "access_token=[redacted]" in everything or "access_token" not in everything


async def test_post_sessions_gives_tokens_only_with_auth_on(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gateway.base}/sessions", json={}) as resp:
        assert "tokens" not in await resp.json()
    async with http.post(f"{gateway.base}/tokens", json={"scope": ["sessions:create"]}) as resp:
        assert resp.status == 404
    async with http.get(f"{gateway.base}/info") as resp:
        assert (await resp.json())["auth"]["mode"] == "open"


async def test_cli_mints_a_link_and_streams_with_a_key(
    start_gateway: StartGateway, http: aiohttp.ClientSession
) -> None:
    gw = await auth_gateway(start_gateway)
    code, out, err = await run_cli("token", "--url", gw.base, "--api-key", KEY, "--ttl", "600")
    assert code == 0, err
    token, link = out.split()
    assert link == f"{gw.base}/#token={token}"
    made = await create(http, gw, token)  # a sessions:create token creates sessions
    assert made["tokens"]["read"] != token

    code, _, err = await run_cli("token", "--url", gw.base, "--api-key", "wrong")
    assert code == 2
    assert "cannot mint a token" in err

    wav = AUDIO_DIR / "goforward.wav"
    code, out, err = await run_cli("stream", str(wav), "--fast", "--url", gw.base)
    assert code == 2
    assert "cannot create a session" in err
    code, out, err = await run_cli(
        "stream", str(wav), "--fast", "--url", gw.base, env={"STT_GATEWAY_API_KEY": KEY}
    )
    assert code == 0, err
    assert out.strip()


async def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    from stt_gateway import auth, errors

    monkeypatch.setattr(auth, "LEEWAY_S", 0.0)  # so this test waits ~1 s, not 6
    authenticator = auth.Authenticator(auth.parse_keys(KEYS), TOKEN_SECRET, 60)
    token = authenticator.mint(authenticator.key(KEY), ["session:read"], "s1", 1).access_token
    assert authenticator.token(token).session_id == "s1"  # verified, then remembered
    assert authenticator.token(token).session_id == "s1"
    expiry = jwt.decode(token, TOKEN_SECRET, algorithms=["HS256"])["exp"]
    await asyncio.sleep(max(0.0, expiry - time.time()) + 0.1)
    with pytest.raises(errors.Unauthorized):
        authenticator.token(token)
