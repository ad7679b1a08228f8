// AudioWorklet processors of the voice chat page (no build step, no dependencies).
//
// pcm-capture: the microphone at the context's rate -> mono float32 at targetRate (24 kHz,
//   what /v1/realtime takes), posted to the page in ~100 ms blocks with their RMS level.
// pcm-player: plays float32 chunks at sourceRate (24 kHz, what replies carry) at the
//   context's rate, and counts what it played of each item, so that an interrupted reply
//   can be truncated to exactly what the listener heard.

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const target = (options.processorOptions && options.processorOptions.targetRate) || 24000;
    this.step = sampleRate / target;      // input samples per output sample
    this.pos = 0;                          // position of the next output sample in the input stream
    this.prev = 0;                         // the last input sample of the previous block
    this.block = Math.round(target / 10);  // 100 ms
    this.out = new Float32Array(this.block);
    this.n = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || !input.length) return true;
    const x = input[0];
    const len = x.length;
    // linear interpolation; index -1 is the previous block's last sample
    while (this.pos < len - 1) {
      const i = Math.floor(this.pos);
      const f = this.pos - i;
      const a = i < 0 ? this.prev : x[i];
      const b = x[i + 1];
      this.out[this.n++] = a + (b - a) * f;
      if (this.n === this.block) this.flush();
      this.pos += this.step;
    }
    this.pos -= len;
    this.prev = x[len - 1];
    return true;
  }

  flush() {
    let sum = 0;
    for (let i = 0; i < this.n; i++) sum += this.out[i] * this.out[i];
    const samples = this.out.slice(0, this.n);
    this.port.postMessage({ samples, rms: Math.sqrt(sum / Math.max(1, this.n)) }, [samples.buffer]);
    this.n = 0;
  }
}

class PcmPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const source = (options.processorOptions && options.processorOptions.sourceRate) || 24000;
    this.ratio = source / sampleRate;  // source samples per output sample
    this.queue = [];                   // {item, data}
    this.pos = 0;                      // position in queue[0].data
    this.played = {};                  // item id -> source samples played
    this.playing = false;
    this.sinceReport = 0;              // output samples since the last progress report
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(m) {
    if (m.type === 'push') {
      this.queue.push({ item: m.item, data: m.samples });
      if (!(m.item in this.played)) this.played[m.item] = 0;
    } else if (m.type === 'clear') {
      const current = this.queue.length ? this.queue[0].item : null;
      const unplayed = this.queue.reduce((n, c) => n + c.data.length, 0) - this.pos;
      this.queue = [];
      this.pos = 0;
      this.playing = false;
      this.port.postMessage({ type: 'cleared', item: current,
                              played: current ? Math.round(this.played[current]) : 0,
                              unplayed: Math.max(0, Math.round(unplayed)) });
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let wrote = false;
    for (let i = 0; i < out.length; i++) {
      while (this.queue.length && this.pos >= this.queue[0].data.length) {
        this.pos -= this.queue[0].data.length;
        this.queue.shift();
      }
      if (!this.queue.length) { out[i] = 0; continue; }
      const c = this.queue[0];
      const k = Math.floor(this.pos);
      const f = this.pos - k;
      const a = c.data[k];
      const b = k + 1 < c.data.length ? c.data[k + 1] : (this.queue.length > 1 ? this.queue[1].data[0] : a);
      out[i] = a + (b - a) * f;
      this.pos += this.ratio;
      this.played[c.item] += this.ratio;
      wrote = true;
    }
    for (let ch = 1; ch < outputs[0].length; ch++) outputs[0][ch].set(out);
    if (wrote) {
      this.sinceReport += out.length;
      if (this.sinceReport >= sampleRate / 4) {  // what was played so far, four times a second
        this.sinceReport = 0;
        this.port.postMessage({ type: 'progress', played: this.played });
      }
    }
    if (wrote !== this.playing) {
      this.playing = wrote;
      const item = this.queue.length ? this.queue[0].item : null;
      this.port.postMessage({ type: wrote ? 'started' : 'drained', item, played: this.played });
    }
    return true;
  }
}

registerProcessor('pcm-capture', PcmCapture);
registerProcessor('pcm-player', PcmPlayer);
