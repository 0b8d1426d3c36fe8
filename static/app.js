// The mic page: capture → PCM16 frames over the session WebSocket; results over EventSource.
// With ?follow=<session_id> it is a read-only view of that session's events.
// With auth on (/info says so) it needs a credential once: a key typed into the page (kept in
// sessionStorage, never in a URL) or a token from the URL fragment (#token=…, which browsers
// never send to the server). Each session then uses its own tokens from POST /sessions: the
// publish token on the WebSocket (as a subprotocol: browsers cannot set headers there), the
// read token on the EventSource (as ?access_token=) and in the follow link's fragment.

const $ = (id) => document.getElementById(id);
const ui = {
  notice: $("notice"), status: $("status"), engine: $("engine"), language: $("language"),
  start: $("start"), stop: $("stop"), activity: $("activity"), level: $("level"),
  finals: $("finals"), interim: $("interim"), ttft: $("ttft"), follow: $("follow"),
  copy: $("copy"), download: $("download"), controls: $("controls"), modeLine: $("mode-line"),
  auth: $("auth"), apiKey: $("api-key"),
  summaryChoice: $("summary-choice"), wantSummary: $("want-summary"),
  summarySection: $("summary-section"), summary: $("summary"), summaryModel: $("summary-model"),
};
const CREDENTIAL = "stt-gateway-credential";

let engines = {};
let live = null; // {sessionId, ws, es, ctx, stream, node, pending, captureStart}
const timing = { onsetWall: null, firstTokenSeen: false, lastTtftMs: null };
// Where the shown interim and the latest utterance start (s of session audio): a final (and
// its speech_end) can arrive after the next utterance began (engine "whisper" makes finals in
// a second pass), and must not wipe what belongs to the newer utterance.
const shown = { interimStart: null, speechStart: null };

function say(text) { ui.status.textContent = text; }
function warn(html) { ui.notice.innerHTML = html; ui.notice.hidden = false; }
function clearWarning() { ui.notice.hidden = true; ui.notice.textContent = ""; }

function setSpeaking(on) {
  ui.activity.classList.toggle("speaking", on);
  ui.activity.setAttribute("aria-label", on ? "speech detected" : "no speech");
}

// -- events (shared by the live and the follow view) -------------------------------------

function onEvent(ev) {
  const d = ev.data || {};
  switch (ev.event_type) {
    case "token":
      ui.interim.textContent = (ui.finals.textContent ? " " : "") + d.text;
      shown.interimStart = d.start;
      if (!timing.firstTokenSeen && timing.onsetWall !== null) {
        timing.firstTokenSeen = true;
        timing.lastTtftMs = Math.round(performance.now() - timing.onsetWall);
      }
      break;
    case "final":
      ui.finals.textContent += (ui.finals.textContent ? " " : "") + d.text;
      if (shown.interimStart === null || shown.interimStart <= d.end) {
        ui.interim.textContent = "";
        shown.interimStart = null;
      }
      break;
    case "speech_start":
      setSpeaking(true);
      shown.speechStart = d.timestamp;
      timing.firstTokenSeen = false;
      // The page knows when the audio at session time t was captured (live view only).
      timing.onsetWall = live ? live.captureStart + d.timestamp * 1000 : null;
      break;
    case "speech_end":
      if (shown.speechStart === null || d.last_word_end >= shown.speechStart) setSpeaking(false);
      if (timing.lastTtftMs !== null) {
        ui.ttft.textContent = `Time to first interim in the last utterance: ${timing.lastTtftMs} ms after speech onset.`;
        timing.lastTtftMs = null;
      }
      break;
    case "summary_token":
      // The pieces come in seq order; the summary event that follows holds them all.
      ui.summarySection.hidden = false;
      ui.summary.textContent += d.text;
      break;
    case "summary":
      ui.summarySection.hidden = false;
      ui.summary.textContent = d.text;
      ui.summaryModel.textContent = `Summary by ${d.model}` +
        (d.segments_left_out ? `, without the first ${d.segments_left_out} segments (too long for the model).` : ".");
      break;
    case "error":
      say(`Gateway says: ${d.message} (${d.code})`);
      break;
    case "session_end":
      setSpeaking(false);
      ui.interim.textContent = "";
      say(`Session ended (${d.reason}), ${d.audio_seconds.toFixed(1)} s of audio.`);
      break;
  }
}

function listen(sessionId, readToken) {
  const path = `/sessions/${encodeURIComponent(sessionId)}`;
  const query = readToken ? `?access_token=${encodeURIComponent(readToken)}` : "";
  const es = new EventSource(`${path}/stream${query}`);
  es.onmessage = (m) => {
    const ev = JSON.parse(m.data);
    onEvent(ev);
    if (ev.event_type === "session_end") { es.close(); finish(); }
  };
  es.onerror = () => {
    // A closed EventSource was refused or lost; an open one reconnects by itself, sending
    // Last-Event-ID: nothing is missed. EventSource hides the status, so ask for it.
    if (es.readyState === EventSource.CLOSED) explainLostStream(path, readToken);
  };
  return es;
}

async function explainLostStream(path, readToken) {
  let status = 0;
  try {
    const headers = readToken ? { Authorization: `Bearer ${readToken}` } : {};
    status = (await fetch(path, { headers })).status;
  } catch { /* unreachable: status 0 */ }
  if (status === 401 || status === 403) {
    warn("Not allowed: this link carries no valid read token for the session (or it has " +
         "expired). Ask whoever shared it for a new follow link.");
    say("Not allowed to follow this session.");
  } else if (status === 404) {
    say("There is no such session (it may have ended long ago).");
  } else {
    say("Lost the event stream from the gateway.");
  }
}

// -- credentials ---------------------------------------------------------------------------

function credential() { return sessionStorage.getItem(CREDENTIAL); }

function authHeaders() {
  const c = credential();
  return c ? { Authorization: `Bearer ${c}` } : {};
}

function askForKey(message) {
  sessionStorage.removeItem(CREDENTIAL);
  ui.auth.hidden = false;
  if (message) warn(message);
  ui.apiKey.focus();
}

function useKey(event) {
  event.preventDefault();
  const key = ui.apiKey.value.trim();
  if (!key) return;
  sessionStorage.setItem(CREDENTIAL, key);
  ui.apiKey.value = "";
  ui.auth.hidden = true;
  clearWarning();
  say("Key set for this tab. Press Start.");
}

/** A token handed over in the URL fragment (#token=…): kept for this tab, then removed from
 * the address bar so it is not copied along with the link. */
function tokenFromFragment() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (token) history.replaceState(null, "", location.pathname + location.search);
  return token;
}

// -- engine and language choices -----------------------------------------------------------

function fillLanguages() {
  const info = engines[ui.engine.value];
  ui.language.replaceChildren(...(info ? info.languages : []).map((tag) => new Option(tag, tag)));
}

async function loadInfo() {
  let info;
  try {
    const resp = await fetch("/info");
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    info = await resp.json();
  } catch (err) {
    warn("The gateway is unreachable, so nothing can be transcribed. Check that " +
         "<code>stt-gateway</code> is running and reload this page.");
    ui.start.disabled = true;
    return;
  }
  if (info.auth && info.auth.mode === "keys" && !credential()) askForKey();
  // A summary at the end can be asked for only where the gateway has an LLM.
  ui.summaryChoice.hidden = !info.summary;
  engines = Object.fromEntries(Object.entries(info.engines).filter(([, e]) => e.available));
  ui.engine.replaceChildren(...Object.keys(engines).map((name) => new Option(name, name)));
  ui.engine.value = info.default_engine in engines ? info.default_engine : Object.keys(engines)[0];
  fillLanguages();
}

// -- capture -------------------------------------------------------------------------------

function micError(err) {
  if (err.name === "NotAllowedError" || err.name === "SecurityError") {
    return "Microphone permission was denied. Allow the microphone for this site in the " +
           "browser's address bar (the camera/mic icon), then press Start again.";
  }
  if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
    return "No microphone was found. Plug one in or enable it in your system settings, then press Start again.";
  }
  if (err.name === "NotReadableError") {
    return "The microphone is busy or blocked by the system (another program may be using it).";
  }
  return `Could not open the microphone: ${err.message || err.name}`;
}

async function openSession(sampleRate) {
  const config = { engine: ui.engine.value, sample_rate: sampleRate };
  if (ui.language.value) config.language = ui.language.value;
  if (!ui.summaryChoice.hidden && ui.wantSummary.checked) config.summary = true;
  let resp;
  try {
    resp = await fetch("/sessions", {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ config }),
    });
  } catch (err) {
    throw new Error("The gateway is unreachable: check that stt-gateway is running.");
  }
  const body = await resp.json();
  if (resp.status === 401) {
    askForKey();
    throw new Error("The gateway did not accept this key or token: enter a valid API key.");
  }
  if (!resp.ok) throw new Error(`${body.error.message} (${body.error.code})`);
  return body;
}

async function start() {
  clearWarning();
  ui.start.disabled = true;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    warn("This browser gives this page no microphone access (navigator.mediaDevices is missing).");
    ui.start.disabled = false;
    return;
  }
  let ctx;
  try {
    // 16 kHz is what the engines want; the browser resamples the microphone for us.
    ctx = new AudioContext({ sampleRate: 16000 });
  } catch {
    ctx = new AudioContext(); // then the gateway resamples (soxr)
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    await ctx.close();
    warn(micError(err));
    ui.start.disabled = false;
    return;
  }
  await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  const node = new AudioWorkletNode(ctx, "pcm16-capture");
  const session = { pending: [], captureStart: null, ws: null, es: null, ctx, stream, node };
  live = session;
  node.port.onmessage = ({ data }) => {
    if (session.captureStart === null) session.captureStart = performance.now() - 20;
    ui.level.value = Math.min(1, data.level * 4);
    if (session.ws && session.ws.readyState === WebSocket.OPEN) session.ws.send(data.pcm);
    else if (session.pending.length < 500) session.pending.push(data.pcm); // ≤ 10 s while connecting
  };
  ctx.createMediaStreamSource(stream).connect(node);

  let created;
  try {
    created = await openSession(ctx.sampleRate);
  } catch (err) {
    warn(err.message);
    stopCapture(session);
    live = null;
    ui.start.disabled = false;
    return;
  }
  session.sessionId = created.session_id;
  ui.finals.textContent = "";
  ui.interim.textContent = "";
  shown.interimStart = null;
  shown.speechStart = null;
  ui.ttft.textContent = "";
  ui.summary.textContent = "";
  ui.summaryModel.textContent = "";
  ui.summarySection.hidden = true;
  const tokens = created.tokens; // present only with auth on
  session.es = listen(created.session_id, tokens && tokens.read);
  const wsUrl = created.ws_url.replace(/^wss?:\/\/[^/]+/, wsOrigin());
  const ws = tokens ? new WebSocket(wsUrl, ["bearer", tokens.publish]) : new WebSocket(wsUrl);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    for (const pcm of session.pending) ws.send(pcm);
    session.pending = [];
  };
  ws.onclose = () => { if (live === session) say("The audio connection closed."); };
  session.ws = ws;
  const readOnly = tokens ? `#token=${encodeURIComponent(tokens.read)}` : "";
  const link = `${location.origin}/?follow=${encodeURIComponent(created.session_id)}${readOnly}`;
  ui.follow.innerHTML = "";
  const a = Object.assign(document.createElement("a"), { href: link, target: "_blank", id: "follow-link" });
  a.textContent = "Follow this session (read-only) in another tab or device";
  ui.follow.append(a);
  ui.stop.disabled = false;
  say(`Listening (${ui.engine.value}, ${created.config.language}, ${ctx.sampleRate} Hz). Speak now.`);
}

function wsOrigin() {
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
}

function stopCapture(session) {
  session.stream.getTracks().forEach((t) => t.stop());
  session.node.disconnect();
  session.ctx.close();
}

function stop() {
  if (!live) return;
  ui.stop.disabled = true;
  stopCapture(live);
  say("Finishing: waiting for the last words…");
  if (live.ws.readyState === WebSocket.OPEN) live.ws.send(JSON.stringify({ type: "close" }));
}

function finish() {
  if (live) {
    if (live.ws) live.ws.close();
    live = null;
  }
  ui.stop.disabled = true;
  ui.start.disabled = !window.isSecureContext;
}

// -- transcript actions ----------------------------------------------------------------------

function transcriptText() { return ui.finals.textContent.trim(); }

async function copyTranscript() {
  try {
    await navigator.clipboard.writeText(transcriptText());
    say("Transcript copied.");
  } catch {
    say("Copy is not allowed here; select the transcript and copy it by hand.");
  }
}

function downloadTranscript() {
  const url = URL.createObjectURL(new Blob([transcriptText() + "\n"], { type: "text/plain" }));
  const a = Object.assign(document.createElement("a"), { href: url, download: "transcript.txt" });
  a.click();
  URL.revokeObjectURL(url);
}

// -- start-up --------------------------------------------------------------------------------

function followView(sessionId, readToken) {
  ui.controls.hidden = true;
  ui.modeLine.textContent = `Following session ${sessionId} (read-only).`;
  say("Waiting for events…");
  listen(sessionId, readToken);
}

function init() {
  ui.engine.addEventListener("change", fillLanguages);
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.copy.addEventListener("click", copyTranscript);
  ui.download.addEventListener("click", downloadTranscript);
  ui.auth.addEventListener("submit", useKey);
  const token = tokenFromFragment();
  const follow = new URLSearchParams(location.search).get("follow");
  if (follow) {
    followView(follow, token);
    return;
  }
  if (token) sessionStorage.setItem(CREDENTIAL, token); // e.g. a sessions:create link
  if (!window.isSecureContext) {
    warn("The microphone only works in a secure context, and this page is plain HTTP on " +
         `<strong>${location.hostname}</strong>. Open it as <code>http://localhost:${location.port || 80}/</code> ` +
         "on the machine running the gateway, or serve the gateway over HTTPS (for example " +
         "behind a TLS reverse proxy). Following a session still works here.");
    ui.start.disabled = true;
  }
  loadInfo();
}

init();
