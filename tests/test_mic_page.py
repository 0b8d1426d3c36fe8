"""The bundled mic page in Debian's Chromium (Playwright), with real speech as the microphone."""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.audio_files import clip, clips, spoken_wer, wer
from tests.conftest import Gateway, ServerFactory, StartGateway
from tests.fakes.openai_chat import KEY, FakeChat, summary_of
from tests.gateway_client import create_session, frames, paced
from tests.tcp_proxy import CuttableProxy

CHROMIUM = shutil.which("chromium")
QUIET = [  # this machine's network is closed: no background calls home
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FAKE_MIC = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
GAP_S = 1.0
OFFSETS_MS = (0, 4, 8, 12, 16, 20, 24, 28)

Launch = Callable[..., Awaitable[Browser]]


@pytest.fixture
async def launch() -> AsyncIterator[Launch]:
    """Start Debian's chromium with extra flags; every browser is closed after the test."""
    assert CHROMIUM, "chromium is missing: the README test command installs it"
    async with async_playwright() as pw:
        browsers: list[Browser] = []

        async def start(*flags: str) -> Browser:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[*QUIET, *flags])
            browsers.append(browser)
            return browser

        yield start
        for browser in browsers:
            await browser.close()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, str]:
    """Every shared clip, 1 s of silence after each, as one WAV: ~34 s, 75 words, so one word
    is 1.3 WER points."""
    pcm = b"".join(c.pcm + b"\0\0" * int(16_000 * GAP_S) for c in clips())
    path = tmp_path_factory.mktemp("mic") / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(pcm)
    return path, pcm, " ".join(c.reference for c in clips())


async def open_page(browser: Browser, url: str) -> Page:
    page = await browser.new_page()
    await page.goto(url)
    await page.wait_for_function("document.querySelector('#engine').options.length > 0")
    return page


async def ended(page: Page) -> None:
    await page.wait_for_function(
        "document.querySelector('#status').textContent.startsWith('Session ended')",
        timeout=20_000,
    )


@pytest.fixture
def pool() -> Iterator[ProcessPoolExecutor]:
    """Two spawned processes for engine runs beside the page (shut down whatever happens)."""
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


async def test_mic_page_transcribes_speech_like_the_engine_and_a_follower_sees_the_same(
    gateway: Gateway, launch: Launch, speech: tuple[Path, bytes, str], pool: ProcessPoolExecutor
) -> None:
    wav, pcm, reference = speech
    # pocketsphinx's output moves with a shift of the audio smaller than one 32 ms window
    # (WER 0.267-0.36 on this file for 0-300 ms of leading silence, measured), and where the
    # browser's capture starts relative to the file is not the page's to choose: so the page
    # is held to the engine fed the file directly at 8 sub-window offsets, ±2 points. Those
    # runs depend on the file alone: they go on while the page plays it in real time.
    loop = asyncio.get_running_loop()
    direct_runs = asyncio.gather(
        *(loop.run_in_executor(pool, engine_wer, pcm, reference, ms) for ms in OFFSETS_MS)
    )
    browser = await launch(*FAKE_MIC, f"--use-file-for-fake-audio-capture={wav}%noloop")
    page = await open_page(browser, gateway.base + "/")
    assert await page.input_value("#engine") == "local"
    assert await page.input_value("#language") == "en-US"
    await page.click("#start")
    await page.wait_for_selector("#follow-link")
    follow_url = await page.get_attribute("#follow-link", "href")
    assert follow_url is not None
    assert "?follow=" in follow_url
    follower = await (await launch()).new_page()
    await follower.goto(follow_url)
    assert await follower.is_hidden("#controls")

    await page.wait_for_function("document.querySelector('#interim').textContent.length > 0")
    assert await page.get_attribute("#activity", "aria-label") == "speech detected"
    await page.wait_for_timeout(int((len(pcm) / 32_000 + 0.5) * 1000))
    await page.click("#stop")
    await ended(page)
    await ended(follower)

    on_page = (await page.text_content("#finals")) or ""
    followed = (await follower.text_content("#finals")) or ""
    assert followed == on_page
    assert "ms after speech onset" in ((await page.text_content("#ttft")) or "")

    direct = await direct_runs
    page_wer = wer(reference, on_page)
    status = await page.text_content("#status")
    print(
        f"\nmic page WER {page_wer:.3f}; engine fed the file directly, by leading offset: "
        + ", ".join(f"{ms} ms {w:.3f}" for ms, w in zip(OFFSETS_MS, direct, strict=True))
        + f"; {status}"
    )
    assert min(direct) - 0.02 <= page_wer <= max(direct) + 0.02


async def test_mic_page_on_a_whisper_default_gateway_gets_whisper_finals(
    start_gateway: StartGateway, launch: Launch, speech: tuple[Path, bytes, str]
) -> None:
    # The README's run command: --default-engine whisper. The page picks the gateway's default,
    # and Whisper's finals (made after the utterance, possibly after the next one's interims)
    # land in order, with the interims of the utterance after them kept.
    gw = await start_gateway(default_engine="whisper")
    wav, pcm, reference = speech
    browser = await launch(*FAKE_MIC, f"--use-file-for-fake-audio-capture={wav}%noloop")
    page = await open_page(browser, gw.base + "/")
    assert await page.input_value("#engine") == "whisper"
    await page.click("#start")
    await page.wait_for_function("document.querySelector('#interim').textContent.length > 0")
    await page.wait_for_timeout(int((len(pcm) / 32_000 + 0.5) * 1000))
    await page.click("#stop")
    await ended(page)
    on_page = (await page.text_content("#finals")) or ""
    page_wer = spoken_wer(reference, on_page)
    print(f"\nmic page on engine whisper: WER {page_wer:.3f} {on_page!r}")
    assert page_wer <= 0.08


def engine_wer(pcm: bytes, reference: str, offset_ms: int) -> float:
    """WER of the local engine fed ``pcm`` whole, after ``offset_ms`` of silence."""
    from stt_gateway.engines.local import LocalEngineProvider
    from stt_gateway.events import FinalData
    from stt_gateway.models import SessionConfig

    recognizer = LocalEngineProvider.spec(SessionConfig()).build()
    results = recognizer.process(b"\0\0" * 16 * offset_ms + pcm) + recognizer.close()
    return wer(reference, " ".join(r.text for r in results if isinstance(r, FinalData)))


async def test_mic_page_in_an_insecure_context_says_why_and_how_to_fix_it(
    start_gateway: StartGateway, launch: Launch
) -> None:
    # A host name that is not localhost, resolved to this machine's loopback by Chromium
    # itself: plain HTTP there is not a secure context, and no traffic leaves the machine.
    # The gateway is bound to loopback, so that name must be listed to be served at all.
    gateway = await start_gateway(allowed_hosts=["stt-gateway.test"])
    port = gateway.base.rsplit(":", 1)[1]
    browser = await launch(*FAKE_MIC, "--host-resolver-rules=MAP stt-gateway.test 127.0.0.1")
    page = await open_page(browser, f"http://stt-gateway.test:{port}/")
    assert await page.evaluate("window.isSecureContext") is False
    notice = (await page.text_content("#notice")) or ""
    assert await page.is_visible("#notice")
    assert "secure context" in notice
    assert f"http://localhost:{port}/" in notice
    assert await page.is_disabled("#start")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--use-fake-device-for-media-stream"], "permission was denied"),
        (["--use-fake-ui-for-media-stream"], "No microphone was found"),
    ],
    ids=["permission-denied", "no-device"],
)
async def test_mic_page_explains_a_microphone_it_cannot_use(
    gateway: Gateway, launch: Launch, flags: list[str], expected: str
) -> None:
    page = await open_page(await launch(*flags), gateway.base + "/")
    await page.click("#start")
    await page.wait_for_selector("#notice:not([hidden])")
    assert expected in ((await page.text_content("#notice")) or "")
    assert await page.is_enabled("#start")


async def test_mic_page_says_when_the_gateway_is_unreachable(
    gateway: Gateway, launch: Launch
) -> None:
    browser = await launch(*FAKE_MIC)
    page = await browser.new_page()
    await page.route("**/info", lambda route: route.abort())
    await page.goto(gateway.base + "/")
    await page.wait_for_selector("#notice:not([hidden])")
    assert "unreachable" in ((await page.text_content("#notice")) or "")
    assert await page.is_disabled("#start")


async def test_follow_view_shows_a_finished_sessions_transcript(
    gateway: Gateway, launch: Launch
) -> None:
    import aiohttp

    c = clips()[0]
    async with aiohttp.ClientSession() as http:
        session = await create_session(http, gateway.base)
        async with http.post(
            session["audio_url"], data=c.pcm, headers={"Content-Type": "application/octet-stream"}
        ):
            pass
        async with http.delete(f"{gateway.base}/sessions/{session['session_id']}") as resp:
            transcript = (await resp.json())["transcript"]
    page = await (await launch()).new_page()
    await page.goto(f"{gateway.base}/?follow={session['session_id']}")
    await ended(page)
    assert await page.text_content("#finals") == transcript


async def test_browser_eventsource_reconnects_by_itself_after_the_stream_breaks(
    start_gateway: StartGateway, launch: Launch
) -> None:
    import aiohttp

    gw = await start_gateway(sse_retry_ms=200)
    proxy = CuttableProxy(int(gw.base.rsplit(":", 1)[1]))
    await proxy.start()
    c = clip("librivox-sns-0870")
    async with aiohttp.ClientSession() as http:
        session = await create_session(http, gw.base)
        page = await (await launch()).new_page()
        # The follow view's EventSource goes through the proxy; audio goes straight in.
        await page.goto(f"http://127.0.0.1:{proxy.port}/?follow={session['session_id']}")
        await page.wait_for_function(
            "document.querySelector('#status').textContent.startsWith('Waiting')"
        )
        cuts = 0
        chunks = frames(c.pcm, 16_000, 100)
        async for i, chunk in _enumerate(paced(chunks, 0.1, 2.0)):
            async with http.post(
                session["audio_url"],
                data=chunk,
                headers={"Content-Type": "application/octet-stream"},
            ):
                pass
            if i in (20, 45):  # mid-utterance, twice
                cuts += proxy.cut()
        async with http.delete(f"{gw.base}/sessions/{session['session_id']}") as resp:
            transcript = (await resp.json())["transcript"]
        await ended(page)
    await proxy.close()
    resumed = [r for r in proxy.requests if b"last-event-id:" in r.lower()]
    print(f"\n{cuts} connections cut; {len(resumed)} reconnects carried Last-Event-ID")
    assert cuts >= 2
    assert len(resumed) >= 2
    assert await page.text_content("#finals") == transcript
    assert transcript


async def _enumerate(items: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    i = 0
    async for item in items:
        yield i, item
        i += 1


async def test_mic_page_with_auth_asks_for_a_key_once_and_shares_a_read_only_follow_link(
    start_gateway: StartGateway, launch: Launch, tmp_path: Path
) -> None:
    key = "page-test-key-0123456789"
    gw = await start_gateway(api_keys=[f"ci:{key}"])
    c = clip("librivox-sns-0920")
    wav = tmp_path / "one.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(c.pcm + b"\0\0" * 16_000)
    browser = await launch(*FAKE_MIC, f"--use-file-for-fake-audio-capture={wav}%noloop")
    page = await open_page(browser, gw.base + "/")
    await page.wait_for_selector("#auth:not([hidden])")
    await page.fill("#api-key", key)
    await page.click("#use-key")
    assert await page.is_hidden("#auth")
    await page.click("#start")
    await page.wait_for_selector("#follow-link")
    follow_url = await page.get_attribute("#follow-link", "href")
    assert follow_url is not None
    assert "#token=" in follow_url
    assert key not in follow_url
    assert key not in page.url

    follower = await (await launch()).new_page()  # another browser: no key of its own
    await follower.goto(follow_url)
    assert "token=" not in follower.url  # taken from the address bar once read
    stranger = await (await launch()).new_page()
    await stranger.goto(follow_url.split("#", 1)[0])  # the link without its token

    # The clock starts at the first interim, not at the click: on a loaded machine the fake
    # microphone starts late, and a fixed wait from the click cut the clip short (WER 0.58).
    await page.wait_for_function("document.querySelector('#interim').textContent.length > 0")
    await page.wait_for_timeout(int((len(c.pcm) / 32_000 + 1.0) * 1000))
    await page.click("#stop")
    await ended(page)
    await ended(follower)
    on_page = (await page.text_content("#finals")) or ""
    assert on_page
    assert await follower.text_content("#finals") == on_page
    assert wer(c.reference, on_page) <= 0.5
    await stranger.wait_for_selector("#notice:not([hidden])")
    assert "Not allowed" in ((await stranger.text_content("#notice")) or "")
    assert await stranger.text_content("#finals") == ""


async def test_cors_lets_a_listed_origins_page_call_the_gateway_and_blocks_others(
    start_gateway: StartGateway, launch: Launch, aiohttp_server: ServerFactory
) -> None:
    from aiohttp import web

    async def home(_: web.Request) -> web.Response:
        return web.Response(text="<p>another app</p>", content_type="text/html")

    site = web.Application()
    site.router.add_get("/", home)
    page_server = await aiohttp_server(site, host="127.0.0.2")  # another origin, on loopback
    origin = f"http://127.0.0.2:{page_server.port}"
    key = "cors-test-key-0123456789"
    listed = await start_gateway(api_keys=[f"ci:{key}"], cors_origins=[origin])
    unlisted = await start_gateway(api_keys=[f"ci:{key}"])
    page = await (await launch()).new_page()
    await page.goto(origin + "/")
    call = """async ([base, key]) => {
        try {
            const resp = await fetch(base + "/sessions", {
                method: "POST", body: "{}",
                headers: { "Authorization": "Bearer " + key, "Content-Type": "application/json" },
            });
            return String(resp.status);
        } catch (err) { return "blocked"; }
    }"""
    assert await page.evaluate(call, [listed.base, key]) == "201"  # after its preflight
    assert await page.evaluate(call, [unlisted.base, key]) == "blocked"


MEDIARECORDER_JS = """
async ([wsUrl, seconds]) => {
  // What pages that already use MediaRecorder do (README): each blob, as it is, one frame.
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const ws = new WebSocket(wsUrl);
  ws.binaryType = "arraybuffer";
  const events = [];
  const closed = new Promise((resolve) => { ws.onclose = resolve; });
  ws.onmessage = (m) => events.push(JSON.parse(m.data));
  await new Promise((resolve) => { ws.onopen = resolve; });
  const recorder = new MediaRecorder(stream, {mimeType: "audio/webm;codecs=opus"});
  const sizes = [];
  let head = "";
  recorder.ondataavailable = async (e) => {
    const bytes = new Uint8Array(await e.data.arrayBuffer());
    if (!sizes.length) head = Array.from(bytes.slice(0, 4), (b) => b.toString(16)).join(" ");
    sizes.push(bytes.length);
    ws.send(bytes);
  };
  const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
  recorder.start(250);
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  recorder.stop();
  await stopped;
  await new Promise((resolve) => setTimeout(resolve, 0));  // the last blob's send
  ws.send(JSON.stringify({type: "close"}));
  await closed;
  return {events, sizes, head};
}
"""


async def test_a_mediarecorder_webm_stream_sent_as_it_arrives_is_transcribed(
    start_gateway: StartGateway,
    launch: Launch,
    http: aiohttp.ClientSession,
    speech: tuple[Path, bytes, str],
) -> None:
    """Chromium's own MediaRecorder (WebM/Opus, 250 ms timeslice, the shared speech as the
    microphone), each blob sent unchanged as one WebSocket frame, as browser apps do
    (``docs/protocols/mediarecorder-webm.md``): only the first blob has the header and about
    half have an odd byte count; the session decodes it and transcribes it as well as the PCM16 mic
    page does on engine whisper (WER ≤ 0.08)."""
    gw = await start_gateway(default_engine="whisper", whisper_pass_timeout_s=120.0)
    wav, pcm, reference = speech
    browser = await launch(*FAKE_MIC, f"--use-file-for-fake-audio-capture={wav}%noloop")
    page = await browser.new_page()
    await page.goto(gw.base + "/")  # the gateway's own origin: its WebSocket is same-origin
    session = await create_session(http, gw.base)
    seconds = len(pcm) / 32_000 + 0.5
    got = await page.evaluate(MEDIARECORDER_JS, [session["ws_url"], seconds])
    assert got["head"] == "1a 45 df a3"  # EBML: a WebM stream
    assert any(size % 2 for size in got["sizes"])  # a PCM16-only path would refuse these
    events = got["events"]
    assert not [e for e in events if e["event_type"] == "error"], events
    assert events[-1]["event_type"] == "session_end"
    assert events[-1]["data"]["audio_seconds"] == pytest.approx(seconds, abs=1.0)
    text = " ".join(e["data"]["text"] for e in events if e["event_type"] == "final")
    recorded_wer = spoken_wer(reference, text)
    print(f"\nMediaRecorder WebM/Opus on engine whisper: WER {recorded_wer:.3f} {text!r}")
    assert recorded_wer <= 0.08


async def test_mic_page_shows_the_summary_as_it_streams_when_the_gateway_has_an_llm(
    start_gateway: StartGateway,
    aiohttp_server: ServerFactory,
    launch: Launch,
    tmp_path: Path,
) -> None:
    plain = await start_gateway()
    page = await open_page(await launch(), plain.base + "/")
    assert await page.is_hidden("#summary-choice")  # no LLM: nothing to offer

    chat = FakeChat(piece_delay_s=0.15)
    llm = await aiohttp_server(chat.app())
    gateway = await start_gateway(
        llm_url=str(llm.make_url("/v1")), llm_model="fake-model", llm_api_key=KEY
    )
    c = clip("goforward")
    wav = tmp_path / "goforward.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(c.pcm + b"\0\0" * 16_000)
    browser = await launch(*FAKE_MIC, f"--use-file-for-fake-audio-capture={wav}%noloop")
    page = await open_page(browser, gateway.base + "/")
    assert await page.is_checked("#want-summary")
    await page.click("#start")
    await page.wait_for_function("document.querySelector('#finals').textContent.length > 0")
    await page.click("#stop")
    # Streaming: some of the summary shown, the model line not yet (it comes with `summary`).
    await page.wait_for_function(
        "document.querySelector('#summary').textContent.length > 0"
        " && document.querySelector('#summary-model').textContent === ''"
    )
    await ended(page)
    session_id = (await page.get_attribute("#follow-link", "href") or "").split("follow=")[1]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway.base}/sessions/{session_id}/transcript") as resp,
    ):
        summary = (await resp.json())["summary"]
    assert summary["text"] == summary_of(chat.requests[0]["messages"][-1]["content"])
    assert await page.text_content("#summary") == summary["text"]
    assert await page.text_content("#summary-model") == "Summary by fake-model."
