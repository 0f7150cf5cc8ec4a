// doodle.js: recognise Quick, Draw! doodles from pen strokes in the browser, with no server.
//
// The browser twin of the Python `Classifier` (doodle_rnn/inference.py), with the same names where they
// fit: `Recognizer.load(url)`, `predict(strokes, topK)`, `stream()` with `addPoint`/`endStroke`/`predict`,
// `modelView(strokes)`. A drawing is raw strokes `[xs, ys, ts]` in any scale (or Google-simplified
// `[xs, ys]`), exactly as the Python side takes them.
//
// One way for a drawing: `normalize` and `encode` below are a second implementation of
// `data/normalize.py` and `data/encode.py`, line for line in their arithmetic (float64 throughout, the
// same order of operations, round half to even at the very end), and tests hold them to the Python
// functions on 7,692 real raw captures (tests/test_web.py). Read normalize.py's docstring before
// changing any arithmetic here: RDP meets exact ties that the last bit decides.
//
// The model is the ONNX graph of `doodle export --web` (weights stored as float16, computed in float32)
// run by ONNX Runtime Web's single-threaded wasm build, loaded from beside this file (./ort/), so no
// request leaves the page and a plain static file server is enough.

const SCALE = 255;
const EPSILON = 2.0;
const MAX_MIN = 64; // normalize.is_simplified's slack: see its docstring
const MIN_MAX = 191;
const CHUNK = 32; // drawings per model run in `probabilities` (sorted by length, as the Python side)
const ORT_URL = new URL("./ort/ort.wasm.min.js", import.meta.url).href;

// ------------------------------------------------------------------------------ normalise
function integralInFrame(values) {
  let lo = Infinity;
  let hi = -Infinity;
  for (const v of values) {
    if (typeof v !== "number" || !(v >= 0 && v <= SCALE) || !Number.isInteger(v)) return null;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return [lo, hi];
}

/** Whether `strokes` already are Google's simplified form (normalize.is_simplified). */
export function isSimplified(strokes) {
  if (!strokes.length) return false;
  let minX = Infinity;
  let minY = Infinity;
  let top = -Infinity;
  for (const s of strokes) {
    if (s.length !== 2 || s[0].length !== s[1].length || s[0].length === 0) return false;
    const rx = integralInFrame(s[0]);
    const ry = rx && integralInFrame(s[1]);
    if (!ry) return false;
    minX = Math.min(minX, rx[0]);
    minY = Math.min(minY, ry[0]);
    top = Math.max(top, rx[1], ry[1]);
  }
  return minX <= MAX_MIN && minY <= MAX_MIN && top >= MIN_MAX;
}

/** numpy's rint: round half to even. */
function rint(v) {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Samples at arc length 0, 1, 2, ... < L, plus the last point (normalize._resample, one stroke). */
function resample(x, y) {
  const n = x.length;
  const seg = new Float64Array(n);
  const cum = new Float64Array(n);
  for (let i = 1; i < n; i++) {
    const dx = x[i] - x[i - 1];
    const dy = y[i] - y[i - 1];
    seg[i] = Math.sqrt(dx * dx + dy * dy);
    cum[i] = cum[i - 1] + seg[i];
  }
  const samples = Math.max(Math.ceil(cum[n - 1]), 1) + 1;
  const rx = new Float64Array(samples);
  const ry = new Float64Array(samples);
  let j = 0;
  for (let s = 0; s < samples - 1; s++) {
    while (j + 1 < n && cum[j + 1] <= s) j++; // the last vertex at or before arc length s
    if (s === cum[j]) {
      rx[s] = x[j];
      ry[s] = y[j];
    } else {
      const t = (s - cum[j]) / seg[j + 1];
      const u = 1.0 - t;
      rx[s] = x[j] * u + x[j + 1] * t;
      ry[s] = y[j] * u + y[j + 1] * t;
    }
  }
  rx[samples - 1] = x[n - 1];
  ry[samples - 1] = y[n - 1];
  return [rx, ry];
}

/** Ramer-Douglas-Peucker keep-mask (normalize._rdp_mask): split at the first farthest point while > eps. */
function rdpKeep(x, y) {
  const n = x.length;
  const keep = new Uint8Array(n);
  keep[0] = 1;
  keep[n - 1] = 1;
  const open = [[0, n - 1]];
  while (open.length) {
    const [a, b] = open.pop();
    if (b - a < 2) continue;
    const dx = x[b] - x[a];
    const dy = y[b] - y[a];
    const norm = Math.sqrt(dx * dx + dy * dy);
    let far = -1;
    let at = -1;
    for (let i = a + 1; i < b; i++) {
      const qx = x[i] - x[a];
      const qy = y[i] - y[a];
      const d = norm === 0 ? Math.hypot(qx, qy) : Math.abs(dx * qy - dy * qx) / norm;
      if (d > far) {
        far = d;
        at = i;
      }
    }
    if (far > EPSILON) {
      keep[at] = 1;
      open.push([a, at], [at, b]);
    }
  }
  return keep;
}

/**
 * Any capture -> Google's simplified strokes (normalize.normalize_strokes): align to the top-left, scale the
 * larger extent to 255, resample at 1 px, RDP with epsilon 2, integer coordinates. A drawing that already
 * `isSimplified` passes through unchanged; empty strokes are dropped.
 */
export function normalize(strokes) {
  if (isSimplified(strokes)) return strokes.map((s) => [s[0].map(Math.trunc), s[1].map(Math.trunc)]);
  const kept = strokes.filter((s) => s[0].length);
  let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity; // prettier-ignore
  for (const s of kept) {
    if (s.length < 2 || s[0].length !== s[1].length) {
      throw new Error("a stroke must be [xs, ys] or [xs, ys, ts] of equal lengths");
    }
    for (let i = 0; i < s[0].length; i++) {
      const [x, y] = [s[0][i], s[1][i]];
      if (!Number.isFinite(x) || !Number.isFinite(y)) throw new Error("stroke coordinates must be finite numbers");
      minX = Math.min(minX, x);
      maxX = Math.max(maxX, x);
      minY = Math.min(minY, y);
      maxY = Math.max(maxY, y);
    }
  }
  let extent = Math.max(maxX - minX, maxY - minY);
  if (extent === 0) extent = 1.0; // a single point or a dot: everything maps to the origin
  return kept.map((s) => {
    const [rx, ry] = resample(
      s[0].map((v) => ((v - minX) * SCALE) / extent),
      s[1].map((v) => ((v - minY) * SCALE) / extent),
    );
    const keep = rdpKeep(rx, ry);
    const xs = [];
    const ys = [];
    for (let i = 0; i < rx.length; i++) {
      if (keep[i]) {
        xs.push(rint(rx[i]));
        ys.push(rint(ry[i]));
      }
    }
    return [xs, ys];
  });
}

// ------------------------------------------------------------------------------ encode
/**
 * Strokes (raw or simplified) -> int16 steps [dx, dy, pen_lift], at most `maxLen` (encode.encode_batch).
 * `stroke3` keeps the pen-up move to each stroke's first point; `reference` drops it (and single points).
 */
export function encode(strokes, encoding = "stroke3", maxLen = 250) {
  if (encoding !== "stroke3" && encoding !== "reference") throw new Error(`unknown encoding ${encoding}`);
  const simplified = normalize(strokes);
  const steps = [];
  let px = 0;
  let py = 0;
  simplified.forEach((s, si) => {
    const n = s[0].length;
    for (let i = 0; i < n; i++) {
      const x = Math.trunc(s[0][i]);
      const y = Math.trunc(s[1][i]);
      const first = encoding === "reference" ? i === 0 : si === 0 && i === 0;
      if (!first && steps.length < 3 * maxLen) steps.push(x - px, y - py, i === n - 1 ? 1 : 0);
      px = x;
      py = y;
    }
  });
  return Int16Array.from(steps);
}

/** int16 steps -> float32 features [dx/255, dy/255 (clipped to [-1, 1]), pen_lift] (steps_to_features). */
export function features(steps) {
  const f = new Float32Array(steps.length);
  for (let i = 0; i < steps.length; i++) {
    f[i] = i % 3 === 2 ? steps[i] : Math.min(1, Math.max(-1, Math.fround(steps[i] / SCALE)));
  }
  return f;
}

/** Features back to strokes, as the model sees the drawing (encode.features_to_strokes). */
export function featuresToStrokes(f, encoding) {
  const strokes = [];
  let px = 0;
  let py = 0;
  let cx = [0];
  let cy = [0];
  for (let i = 0; i < f.length; i += 3) {
    px += rint(f[i] * SCALE);
    py += rint(f[i + 1] * SCALE);
    cx.push(px);
    cy.push(py);
    if (f[i + 2] > 0.5) {
      strokes.push([cx, cy]);
      [cx, cy] = encoding === "reference" ? [[px], [py]] : [[], []];
    }
  }
  if (cx.length > (encoding === "reference" ? 1 : 0)) strokes.push([cx, cy]);
  return strokes;
}

// ------------------------------------------------------------------------------ the model
let runtime = null;

/** ONNX Runtime Web (wasm only, one thread: a static host gives no cross-origin isolation), loaded once. */
function loadRuntime(url = ORT_URL) {
  runtime ??= import(url).then((ort) => {
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.proxy = false;
    // the wasm binary beside the runtime; its JavaScript loader is built into the bundle
    ort.env.wasm.wasmPaths = { wasm: new URL("./ort-wasm-simd-threaded.wasm", url).href };
    return ort;
  });
  return runtime;
}

function softmax(logits, temperature) {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v / temperature);
  const e = Array.from(logits, (v) => Math.exp(v / temperature - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

function topK(probs, classes, k) {
  const order = probs.map((_, i) => i).sort((a, b) => probs[b] - probs[a] || a - b);
  return order.slice(0, Math.min(k, classes.length)).map((i) => [classes[i], probs[i]]);
}

export class Recognizer {
  /**
   * A model written by `doodle export --web`: `url` is its `.onnx` file (its card, `.json`, beside it)
   * or the card itself. `options.ortUrl`: where ONNX Runtime Web is (default: ./ort/ beside doodle.js).
   */
  static async load(url, options = {}) {
    const base = new URL(url, globalThis.document?.baseURI ?? globalThis.location?.href);
    const cardUrl = new URL(base.pathname.replace(/\.onnx$/, ".json"), base);
    const card = await fetchOk(cardUrl).then((r) => r.json());
    const [ort, bytes] = await Promise.all([
      loadRuntime(options.ortUrl),
      fetchOk(new URL(card.file, cardUrl)).then((r) => r.arrayBuffer()),
    ]);
    const session = await ort.InferenceSession.create(new Uint8Array(bytes), {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
    return new Recognizer(ort, session, card);
  }

  constructor(ort, session, card) {
    this.ort = ort;
    this.session = session;
    this.info = card; // name, classes, encoding, length_rules, temperature, card, ...
    this.classes = card.classes;
    this.encoding = card.encoding;
    this.maxLen = card.length_rules.max_len;
    this.minLen = card.length_rules.min_len;
    this.temperature = card.temperature || 1.0;
    const t = (card.card || {}).announce_threshold;
    /** Calibrated top-1 probability from which a guess is announced ("I know: it's a cow!"), or null. */
    this.announceThreshold = typeof t === "number" && t > 0 && t <= 1 ? t : null;
  }

  get name() {
    return this.info.name;
  }

  /** What the model reads for a drawing: int16 steps [T * 3] (normalise + encode, capped at max_len). */
  encode(strokes) {
    return encode(strokes, this.encoding, this.maxLen);
  }

  /** Class probabilities for many drawings (rows of a Float64 array per drawing; null: no step to read). */
  async probabilities(drawings) {
    const steps = drawings.map((d) => this.encode(d));
    const order = steps.map((_, i) => i).filter((i) => steps[i].length).sort((a, b) => steps[a].length - steps[b].length);
    const out = new Array(drawings.length).fill(null);
    for (let s = 0; s < order.length; s += CHUNK) {
      const idx = order.slice(s, s + CHUNK);
      const logits = await this.logits(idx.map((i) => steps[i]));
      idx.forEach((i, r) => {
        const n = this.classes.length;
        out[i] = softmax(logits.subarray(r * n, (r + 1) * n), this.temperature);
      });
    }
    return out;
  }

  /** Raw logits [B * classes] for encoded drawings, zero-padded to the longest (pad_steps). */
  async logits(stepsList) {
    const t = Math.max(...stepsList.map((s) => s.length / 3));
    const x = new Float32Array(stepsList.length * t * 3);
    stepsList.forEach((s, b) => x.set(features(s), b * t * 3));
    const lengths = BigInt64Array.from(stepsList, (s) => BigInt(s.length / 3));
    const feeds = {
      x: new this.ort.Tensor("float32", x, [stepsList.length, t, 3]),
      lengths: new this.ort.Tensor("int64", lengths, [stepsList.length]),
    };
    const result = await this.session.run(feeds);
    return result.logits.data;
  }

  /** One drawing: `{top: [[class, p], ...], steps, short, features}` (Classifier.analyze). */
  async analyze(strokes, k = 3) {
    const steps = this.encode(strokes);
    const n = steps.length / 3;
    if (!n) return { top: [], steps: 0, short: true, features: new Float32Array(0) };
    const probs = softmax(await this.logits([steps]), this.temperature);
    return { top: topK(probs, this.classes, k), steps: n, short: n < this.minLen, features: features(steps) };
  }

  /** Top-k `[class, probability]` for one drawing, best first (Classifier.predict). */
  async predict(strokes, k = 3) {
    return (await this.analyze(strokes, k)).top;
  }

  /** The drawing as the model sees it: normalised, encoded and decoded back into strokes. */
  modelView(strokes) {
    return featuresToStrokes(features(this.encode(strokes)), this.encoding);
  }

  /** An incremental drawing: add points as they arrive, ask for a guess at any time. */
  stream() {
    return new StreamSession(this);
  }
}

/**
 * Points arrive one by one; `predict()` answers for the drawing so far, with `confident` (the top
 * probability reaches the model's threshold) and `announced` (the first confident class of this drawing,
 * kept through later strokes and undo, forgotten on clear): inference.StreamSession.
 */
export class StreamSession {
  constructor(recognizer) {
    this.recognizer = recognizer;
    this.strokes = [];
    this.open = false;
    this.announced = null;
  }

  addPoint(x, y, t) {
    if (!this.open) {
      this.strokes.push(t === undefined ? [[], []] : [[], [], []]);
      this.open = true;
    }
    const s = this.strokes[this.strokes.length - 1];
    s[0].push(x);
    s[1].push(y);
    if (t !== undefined) s[2].push(t);
  }

  endStroke() {
    this.open = false;
  }

  undo() {
    this.strokes.pop();
    this.open = false;
    if (!this.strokes.length) this.announced = null;
  }

  clear() {
    this.strokes = [];
    this.open = false;
    this.announced = null;
  }

  async predict(k = 3) {
    const top = this.strokes.length ? await this.recognizer.predict(this.strokes, k) : [];
    const threshold = this.recognizer.announceThreshold;
    const confident = top.length > 0 && threshold !== null && top[0][1] >= threshold;
    if (confident && this.announced === null) this.announced = top[0][0];
    return { top, confident, announced: this.announced };
  }
}

async function fetchOk(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
  return res;
}
