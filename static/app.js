// The mic page: capture → PCM16 frames over the session WebSocket; results over EventSource.
// With ?follow=<session_id> it is a read-only view of that session's events.

const $ = (id) => document.getElementById(id);
const ui = {
  notice: $("notice"), status: $("status"), engine: $("engine"), language: $("language"),
  start: $("start"), stop: $("stop"), activity: $("activity"), level: $("level"),
  finals: $("finals"), interim: $("interim"), ttft: $("ttft"), follow: $("follow"),
  copy: $("copy"), download: $("download"), controls: $("controls"), modeLine: $("mode-line"),
};

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

function listen(sessionId) {
  const es = new EventSource(`/sessions/${encodeURIComponent(sessionId)}/stream`);
  es.onmessage = (m) => {
    const ev = JSON.parse(m.data);
    onEvent(ev);
    if (ev.event_type === "session_end") { es.close(); finish(); }
  };
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) say("Lost the event stream from the gateway.");
    // Otherwise the browser reconnects by itself, sending Last-Event-ID: nothing is missed.
  };
  return es;
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
  let resp;
  try {
    resp = await fetch("/sessions", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ config }),
    });
  } catch (err) {
    throw new Error("The gateway is unreachable: check that stt-gateway is running.");
  }
  const body = await resp.json();
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
  session.es = listen(created.session_id);
  const ws = new WebSocket(created.ws_url.replace(/^wss?:\/\/[^/]+/, wsOrigin()));
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    for (const pcm of session.pending) ws.send(pcm);
    session.pending = [];
  };
  ws.onclose = () => { if (live === session) say("The audio connection closed."); };
  session.ws = ws;
  const link = `${location.origin}/?follow=${encodeURIComponent(created.session_id)}`;
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

function followView(sessionId) {
  ui.controls.hidden = true;
  ui.modeLine.textContent = `Following session ${sessionId} (read-only).`;
  say("Waiting for events…");
  listen(sessionId);
}

function init() {
  ui.engine.addEventListener("change", fillLanguages);
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.copy.addEventListener("click", copyTranscript);
  ui.download.addEventListener("click", downloadTranscript);
  const follow = new URLSearchParams(location.search).get("follow");
  if (follow) {
    followView(follow);
    return;
  }
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
