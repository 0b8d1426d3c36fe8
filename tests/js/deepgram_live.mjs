// Streams WAV files to a gateway's /v1/listen with Deepgram's own JavaScript SDK (4.x),
// configured with nothing but the gateway's base URL and a key, in 20 ms frames paced at
// STREAM_SPEED times real time (default 1).
// Prints one JSON line per file: the SDK events that fired, the joined finals, any errors.
// Usage: node deepgram_live.mjs <base url> <key> <engine> <file.wav>...
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { createClient, LiveTranscriptionEvents } from "@deepgram/sdk";

const [base, key, engine, ...files] = process.argv.slice(2);
const speed = Number(process.env.STREAM_SPEED || "1"); // times real time
const deepgram = createClient(key, { global: { url: base } });

function pcmOf(path) {
  const wav = readFileSync(path);
  let pos = 12;
  while (wav.toString("ascii", pos, pos + 4) !== "data") pos += 8 + wav.readUInt32LE(pos + 4);
  return wav.subarray(pos + 8, pos + 8 + wav.readUInt32LE(pos + 4));
}

function transcribe(path) {
  const pcm = pcmOf(path);
  const seen = {};
  const finals = [];
  const errors = [];
  const count = (name) => (seen[name] = (seen[name] || 0) + 1);
  return new Promise((resolve) => {
    const live = deepgram.listen.live({
      model: "nova-3", language: "en", encoding: "linear16", sample_rate: 16000,
      interim_results: true, utterance_end_ms: 1000, vad_events: true, engine,
    });
    live.on(LiveTranscriptionEvents.Open, async () => {
      count("open");
      const start = Date.now();
      for (let i = 0, n = 0; i < pcm.length; i += 640, n++) {
        const wait = start + (n * 20) / speed - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        live.send(pcm.subarray(i, i + 640));
      }
      live.requestClose();
    });
    live.on(LiveTranscriptionEvents.Transcript, (r) => {
      count(r.is_final ? "final" : "interim");
      const text = r.channel.alternatives[0].transcript;
      if (r.is_final && text) finals.push(text);
    });
    live.on(LiveTranscriptionEvents.Metadata, () => count("metadata"));
    live.on(LiveTranscriptionEvents.SpeechStarted, () => count("speech_started"));
    live.on(LiveTranscriptionEvents.UtteranceEnd, () => count("utterance_end"));
    live.on(LiveTranscriptionEvents.Unhandled, (m) => errors.push(`unhandled: ${JSON.stringify(m)}`));
    live.on(LiveTranscriptionEvents.Error, (e) => errors.push(`error: ${e.message ?? e}`));
    live.on(LiveTranscriptionEvents.Close, (e) => {
      count("close");
      resolve({ name: basename(path, ".wav"), seen, text: finals.join(" "), errors, code: e.code });
    });
  });
}

for (const file of files) console.log(JSON.stringify(await transcribe(file)));
