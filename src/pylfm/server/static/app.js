// The voice chat page: a client of pylfm's /v1/realtime (OpenAI's Realtime API, GA events).
// Microphone -> AudioWorklet (24 kHz float) -> PCM16 base64 -> input_audio_buffer.append;
// replies: response.output_audio.delta -> AudioWorklet player; transcripts of both sides.
// Barge-in: when the user speaks over a reply (server VAD's speech_started, or the talk
// button), playback stops, and the page sends response.cancel and conversation.item.truncate
// with what it played, so the model's history holds only what the user heard.
'use strict';

const RATE = 24000;
const $ = (id) => document.getElementById(id);

// What happened, for people debugging and for the browser test.
const state = window.pylfm = {
  events: [], errors: [], sent: [], truncations: [], played: 0, playedBy: {}, audioChunks: 0,
  users: {}, assistants: {}, connected: false,
};

let ws = null, ctx = null, mic = null, capture = null, player = null;
let handsFree = true, talking = false;
let active = null;          // the response being generated: {id, item}
let speakingItem = null;    // the item whose audio is playing
let pendingTruncate = null;
const silenced = new Set();  // items whose audio the user cut off: late deltas are dropped

function setStatus(text, cls) {
  $('status-text').textContent = text;
  $('status').className = 'status ' + (cls || (state.connected ? 'live' : ''));
}

function send(event) {
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify(event));
    if (event.type !== 'input_audio_buffer.append') state.sent.push(event.type);
  }
}

// ------------------------------------------------------------------ transcript bubbles
function bubble(id, role) {
  let el = document.querySelector(`.msg[data-id="${CSS.escape(id)}"]`);
  if (!el) {
    $('hint') && $('hint').remove();
    el = document.createElement('div');
    el.className = `msg ${role} pending`;
    el.dataset.id = id;
    el.innerHTML = `<span class="who">${role === 'user' ? 'you' : 'model'}</span><span class="body"></span>`;
    $('log').appendChild(el);
    el.scrollIntoView({ block: 'end' });
  }
  return el;
}

function setText(id, role, text, append) {
  const el = bubble(id, role);
  const body = el.querySelector('.body');
  body.textContent = append ? body.textContent + text : text;
  (role === 'user' ? state.users : state.assistants)[id] = body.textContent;
  el.scrollIntoView({ block: 'end' });
}

// ------------------------------------------------------------------ audio
function b64ToFloat(b64) {
  const bin = atob(b64);
  const n = bin.length >> 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
    if (v >= 0x8000) v -= 0x10000;
    out[i] = v / 32768;
  }
  return out;
}

function floatToB64(x) {
  let bin = '';
  for (let i = 0; i < x.length; i++) {
    const v = Math.max(-1, Math.min(1, x[i]));
    const s = v < 0 ? Math.round(v * 32768) : Math.round(v * 32767);
    bin += String.fromCharCode(s & 0xff, (s >> 8) & 0xff);
  }
  return btoa(bin);
}

async function startAudio() {
  ctx = new AudioContext();
  await ctx.audioWorklet.addModule('/static/audio-worklet.js');
  mic = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const source = ctx.createMediaStreamSource(mic);
  capture = new AudioWorkletNode(ctx, 'pcm-capture', { processorOptions: { targetRate: RATE } });
  const sink = ctx.createGain();
  sink.gain.value = 0;
  source.connect(capture).connect(sink).connect(ctx.destination);
  capture.port.onmessage = (e) => {
    $('level').style.width = Math.min(100, Math.round(e.data.rms * 400)) + '%';
    if (handsFree || talking) send({ type: 'input_audio_buffer.append', audio: floatToB64(e.data.samples) });
  };
  player = new AudioWorkletNode(ctx, 'pcm-player', { outputChannelCount: [1], processorOptions: { sourceRate: RATE } });
  player.connect(ctx.destination);
  player.port.onmessage = (e) => onPlayer(e.data);
  await ctx.resume();
}

function onPlayer(m) {
  if (m.played && typeof m.played === 'object') {
    state.playedBy = m.played;
    state.played = Object.values(m.played).reduce((a, b) => a + b, 0);
  }
  if (m.type === 'started') {
    speakingItem = m.item;
    document.querySelectorAll('.msg.playing').forEach((el) => el.classList.remove('playing'));
    if (m.item) bubble(m.item, 'assistant').classList.add('playing');
    setStatus('speaking', 'speaking');
  } else if (m.type === 'drained') {
    document.querySelectorAll('.msg.playing').forEach((el) => el.classList.remove('playing'));
    speakingItem = null;
    if (state.connected) setStatus(handsFree ? 'listening' : 'ready', 'live');
  } else if (m.type === 'cleared') {
    const done = pendingTruncate;
    pendingTruncate = null;
    document.querySelectorAll('.msg.playing').forEach((el) => el.classList.remove('playing'));
    const item = m.item || (done && done.item);
    if (item && (m.unplayed > 0 || (done && done.generating))) {
      const ms = Math.round(m.played / (RATE / 1000));
      send({ type: 'conversation.item.truncate', item_id: item, content_index: 0, audio_end_ms: ms });
      state.truncations.push({ item, audio_end_ms: ms });
      bubble(item, 'assistant').classList.add('interrupted');
    }
    speakingItem = null;
  }
}

// Stop the reply: playing audio and the generation, and tell the server what was heard.
function interrupt() {
  const generating = active !== null;
  if (active && active.item) silenced.add(active.item);
  if (speakingItem) silenced.add(speakingItem);
  if (generating) send({ type: 'response.cancel', response_id: active.id });
  if (speakingItem || generating) {
    pendingTruncate = { item: speakingItem || (active && active.item), generating };
    player.port.postMessage({ type: 'clear' });
  }
}

// ------------------------------------------------------------------ the session
function sessionConfig() {
  handsFree = document.querySelector('input[name=turns]:checked').value === 'vad';
  return {
    type: 'realtime',
    mode: $('mode').value,
    output_modalities: ['audio'],
    audio: {
      input: {
        format: { type: 'audio/pcm', rate: RATE },
        transcription: { model: 'lfm2-audio' },
        // the page itself stops the reply when the user talks over it (interrupt())
        turn_detection: handsFree ? { type: 'server_vad', silence_duration_ms: 500, create_response: true,
                                      interrupt_response: false } : null,
      },
      output: { format: { type: 'audio/pcm', rate: RATE }, voice: $('voice').value },
    },
  };
}

function onEvent(ev) {
  state.events.push(ev.type);
  switch (ev.type) {
    case 'session.created':
      send({ type: 'session.update', session: sessionConfig() });
      break;
    case 'session.updated':
      state.connected = true;
      setStatus(handsFree ? 'listening' : 'ready', 'live');
      $('talk').classList.toggle('vad', handsFree);
      $('talk').textContent = handsFree ? 'Hands-free' : 'Hold to talk';
      break;
    case 'input_audio_buffer.speech_started':
      setStatus('hearing you', 'listening');
      interrupt();
      break;
    case 'input_audio_buffer.speech_stopped':
      setStatus('thinking', 'live');
      break;
    case 'input_audio_buffer.committed':
      bubble(ev.item_id, 'user');
      break;
    case 'conversation.item.added':
      if (ev.item && ev.item.role === 'user') {
        const t = (ev.item.content || []).filter((c) => c.type === 'input_text').map((c) => c.text).join(' ');
        bubble(ev.item.id, 'user');
        if (t) setText(ev.item.id, 'user', t);
      }
      break;
    case 'conversation.item.input_audio_transcription.delta':
      setText(ev.item_id, 'user', ev.delta, true);
      break;
    case 'conversation.item.input_audio_transcription.completed':
      setText(ev.item_id, 'user', ev.transcript);
      bubble(ev.item_id, 'user').classList.remove('pending');
      break;
    case 'response.created':
      active = { id: ev.response.id, item: null };
      break;
    case 'response.output_item.added':
      if (active) active.item = ev.item.id;
      bubble(ev.item.id, 'assistant');
      break;
    case 'response.output_audio_transcript.delta':
    case 'response.audio_transcript.delta':
    case 'response.output_text.delta':
    case 'response.text.delta':
      setText(ev.item_id, 'assistant', ev.delta, true);
      break;
    case 'response.output_audio.delta':
    case 'response.audio.delta': {
      if (silenced.has(ev.item_id)) break;
      const samples = b64ToFloat(ev.delta);
      state.audioChunks += 1;
      player.port.postMessage({ type: 'push', item: ev.item_id, samples }, [samples.buffer]);
      break;
    }
    case 'response.done': {
      const r = ev.response;
      if (active && active.id === r.id) active = null;
      const item = r.output && r.output[0];
      if (item) {
        bubble(item.id, 'assistant').classList.remove('pending');
        if (r.status === 'cancelled') bubble(item.id, 'assistant').classList.add('interrupted');
      }
      break;
    }
    case 'conversation.item.truncated':
      send({ type: 'conversation.item.retrieve', item_id: ev.item_id });  // what the model is now said to have said
      break;
    case 'conversation.item.retrieved': {
      const c = (ev.item.content || [])[0];
      if (ev.item.role === 'assistant' && c) setText(ev.item.id, 'assistant', c.transcript || c.text || '');
      break;
    }
    case 'error':
      if (ev.error.code === 'response_cancel_not_active') break;  // the reply had ended already
      state.errors.push(ev.error);
      setStatus(ev.error.message, 'error');
      break;
  }
}

async function connect() {
  const button = $('connect');
  button.disabled = true;
  try {
    if (!ctx) await startAudio();
  } catch (e) {
    setStatus('microphone: ' + e.message, 'error');
    button.disabled = false;
    return;
  }
  const key = $('key').value.trim();
  localStorage.setItem('pylfm-key', key);
  const protocols = ['realtime'];
  if (key) protocols.push('openai-insecure-api-key.' + key);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  ws = new WebSocket(`${scheme}://${location.host}/v1/realtime`, protocols);
  ws.onmessage = (m) => onEvent(JSON.parse(m.data));
  ws.onopen = () => {
    button.textContent = 'Stop';
    button.disabled = false;
    $('talk').disabled = $('text').disabled = $('send').disabled = false;
  };
  ws.onclose = (e) => {
    state.connected = false;
    active = null;
    if (player) player.port.postMessage({ type: 'clear' });
    pendingTruncate = null;
    button.textContent = 'Start';
    button.disabled = false;
    $('talk').disabled = $('text').disabled = $('send').disabled = true;
    setStatus(e.code === 1000 || e.code === 1005 ? 'not connected'
              : `disconnected (${e.code}${e.reason ? ': ' + e.reason : ''})`, e.code === 1000 ? '' : 'error');
    ws = null;
  };
}

function disconnect() {
  if (ws) ws.close(1000);
}

// ------------------------------------------------------------------ controls
$('connect').onclick = () => (ws ? disconnect() : connect());
$('key').value = localStorage.getItem('pylfm-key') || '';
for (const el of [$('voice'), $('mode'), ...document.querySelectorAll('input[name=turns]')]) {
  el.onchange = () => {
    if (!ws) return;
    interrupt();
    send({ type: 'input_audio_buffer.clear' });
    send({ type: 'session.update', session: sessionConfig() });
  };
}

function pressTalk() {
  if (handsFree || !ws || talking) return;
  interrupt();
  talking = true;
  send({ type: 'input_audio_buffer.clear' });
  $('talk').classList.add('held');
  setStatus('hearing you', 'listening');
}

function releaseTalk() {
  if (!talking) return;
  talking = false;
  $('talk').classList.remove('held');
  // the last capture block may still be on its way: commit after it
  setTimeout(() => {
    send({ type: 'input_audio_buffer.commit' });
    send({ type: 'response.create' });
    setStatus('thinking', 'live');
  }, 120);
}

$('talk').addEventListener('pointerdown', (e) => { e.preventDefault(); pressTalk(); });
window.addEventListener('pointerup', releaseTalk);
window.addEventListener('keydown', (e) => {
  if (e.code === 'Space' && document.activeElement.tagName !== 'INPUT' && !e.repeat) { e.preventDefault(); pressTalk(); }
});
window.addEventListener('keyup', (e) => { if (e.code === 'Space') releaseTalk(); });

$('text-form').onsubmit = (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text || !ws) return;
  interrupt();
  send({ type: 'conversation.item.create', item: { type: 'message', role: 'user',
         content: [{ type: 'input_text', text }] } });
  send({ type: 'response.create' });
  $('text').value = '';
};
