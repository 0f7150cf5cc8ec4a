// The drawing page: capture raw pen strokes (x, y, t per point), send them as they are, show guesses.
//
// Guesses come from the server's API, or, on a static site from `doodle export --web`, from doodle.js
// in the page answering the same API questions (see "guesses without a server" below).
//
// Nothing here preprocesses a drawing: the server normalises and encodes exactly as training did, so
// the page only records what the pointer did (CSS pixels of the canvas, milliseconds since the first
// point) and displays what the API answers, including the drawing as the model saw it.
//
// Announcing, like the game. A model whose card has `announce_threshold` (chosen on the validation
// split so that a call is right at least 95% of the time) makes a call once the top guess's calibrated
// probability, as the API returns it, reaches that threshold: "I know: it's a cow!". It is made once
// per drawing, from the first such answer, and stays while the drawing goes on, including through undo
// (what was said was said); it goes when the drawing is emptied (Clear, undoing every stroke, a new
// game round). Without a threshold the page never announces and says nothing about it.
// In the game only the target is announced (a sure but wrong guess just leads the list, as in Quick,
// Draw!), and the round is won the moment it is; the score keeps how much drawing that took (seconds
// since the first point and points drawn). A model without a threshold wins when the top guess is the
// target, as before.
"use strict";

(() => {
  const THROTTLE_MS = 250; // at most one guess request this often while a stroke is being drawn
  const GAME_SECONDS = 20;
  const ROUND_PAUSE_MS = 3000; // time to read how the round went before the next one starts
  const REQUEST_TIMEOUT_MS = 10000; // a request not answered by then is given up (the next one goes)
  const LOAD_TIMEOUT_MS = 60000; // a model's first use loads it on the server: allow for a large one

  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  const viewCanvas = $("model-view");
  const viewCtx = viewCanvas.getContext("2d");

  // ---------------------------------------------------------------- drawing state
  let strokes = []; // [{x: [], y: [], t: []}]
  let current = null; // the stroke under the pointer
  let activePointer = null;
  let t0 = null; // time of the drawing's first point
  let version = 0; // bumps on every change of the drawing

  // ---------------------------------------------------------------- prediction state
  let inflight = false;
  let pending = false; // the drawing changed while a request was in flight
  let shownVersion = 0; // the drawing version whose guesses are on screen
  let lastSent = 0;
  let throttleTimer = null;
  let lastResult = null;
  let lastSentStrokes = null;
  let idleWaiters = [];

  // ---------------------------------------------------------------- the model and its announcement
  // The model the page asks: null until GET /api/models answered (the server's default until then).
  let modelName = null;
  const model = { name: "", threshold: null, card: {} };
  let drawingId = 0; // bumps whenever the drawing is emptied: answers for an older drawing never announce
  let announced = null; // {class, probability, strokes, points, seconds, drawing}: this drawing's call

  function payloadStrokes() {
    return strokes.filter((s) => s.x.length > 0).map((s) => [s.x.slice(), s.y.slice(), s.t.slice()]);
  }

  // ---------------------------------------------------------------- canvas
  function resizeCanvas() {
    const rect = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(rect.width * dpr);
    canvas.height = Math.round(rect.height * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    redraw();
  }

  function strokeStyle(c, width) {
    c.lineCap = "round";
    c.lineJoin = "round";
    c.lineWidth = width;
    c.strokeStyle = "#1d1d1f";
  }

  function drawStroke(c, xs, ys) {
    if (!xs.length) return;
    c.beginPath();
    c.moveTo(xs[0], ys[0]);
    if (xs.length === 1) c.lineTo(xs[0] + 0.01, ys[0]);
    for (let i = 1; i < xs.length; i++) c.lineTo(xs[i], ys[i]);
    c.stroke();
  }

  function redraw() {
    const rect = canvas.getBoundingClientRect();
    ctx.clearRect(0, 0, rect.width, rect.height);
    strokeStyle(ctx, 4);
    for (const s of strokes) drawStroke(ctx, s.x, s.y);
    $("hint").classList.toggle("gone", strokes.length > 0);
    const n = strokes.length;
    $("stroke-count").textContent = `${n} stroke${n === 1 ? "" : "s"}`;
  }

  function pointFrom(ev) {
    const rect = canvas.getBoundingClientRect();
    const now = ev.timeStamp || performance.now();
    if (t0 === null) t0 = now;
    return [
      Math.round((ev.clientX - rect.left) * 100) / 100,
      Math.round((ev.clientY - rect.top) * 100) / 100,
      Math.round(now - t0),
    ];
  }

  function addPoint(ev) {
    const [x, y, t] = pointFrom(ev);
    const n = current.x.length;
    if (n && current.x[n - 1] === x && current.y[n - 1] === y) return; // no movement, no new point
    current.x.push(x);
    current.y.push(y);
    current.t.push(t);
    if (n) {
      strokeStyle(ctx, 4);
      ctx.beginPath();
      ctx.moveTo(current.x[n - 1], current.y[n - 1]);
      ctx.lineTo(x, y);
      ctx.stroke();
    }
  }

  canvas.addEventListener("pointerdown", (ev) => {
    if (activePointer !== null || (ev.pointerType === "mouse" && ev.button !== 0)) return;
    ev.preventDefault();
    activePointer = ev.pointerId;
    canvas.setPointerCapture(ev.pointerId);
    current = { x: [], y: [], t: [] };
    strokes.push(current);
    addPoint(ev);
    version++;
    redraw();
  });

  canvas.addEventListener("pointermove", (ev) => {
    if (ev.pointerId !== activePointer) return;
    ev.preventDefault();
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [];
    for (const e of events.length ? events : [ev]) addPoint(e);
    version++;
    schedulePredict(false);
  });

  function endStroke(ev) {
    if (ev.pointerId !== activePointer) return;
    activePointer = null;
    current = null;
    version++;
    schedulePredict(true);
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  // ---------------------------------------------------------------- predictions
  function schedulePredict(now) {
    if (now) {
      clearTimeout(throttleTimer);
      throttleTimer = null;
      requestPredict();
      return;
    }
    if (throttleTimer) return;
    const wait = Math.max(0, THROTTLE_MS - (performance.now() - lastSent));
    throttleTimer = setTimeout(() => {
      throttleTimer = null;
      requestPredict();
    }, wait);
  }

  async function requestPredict() {
    if (inflight) {
      pending = true;
      return;
    }
    const sent = payloadStrokes();
    const sentVersion = version;
    const sentDrawing = drawingId;
    const sentModel = modelName;
    if (!sent.length) {
      showGuesses(null, sentVersion);
      settleIdle();
      return;
    }
    inflight = true;
    pending = false;
    lastSent = performance.now();
    try {
      const body = await api("api/predict", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ strokes: sent, top_k: 3, ...(sentModel ? { model: sentModel } : {}) }),
      });
      if (sentModel !== modelName) {
        pending = true; // the answer of the model the player just left: ask the new one
        return;
      }
      lastSentStrokes = sent;
      lastResult = body;
      showGuesses(body, sentVersion);
      if (sentDrawing === drawingId) judge(body, sent);
    } catch (e) {
      shownVersion = sentVersion;
      setStatus(e.refused ? `The server refused the drawing: ${e.message}` : `${e.message}.`, true);
    } finally {
      inflight = false;
      if (pending) {
        pending = false;
        requestPredict();
      } else {
        settleIdle();
      }
    }
  }

  /**
   * GET or POST `path`, relative to the page (so it works under any path prefix), and return the JSON
   * answer. Throws an Error that says what went wrong, in words for the status line: no answer within
   * `timeoutMs`, the server unreachable, an answer that is not JSON (a proxy's error page), or
   * the API's own error (`refused`: true, the message is the API's).
   */
  async function api(path, init = {}, timeoutMs = REQUEST_TIMEOUT_MS) {
    const inPage = await inPageApi();
    if (inPage) return inPage(path, init);
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), timeoutMs);
    let res, text;
    try {
      res = await fetch(path, { ...init, signal: abort.signal });
      text = await res.text();
    } catch (e) {
      throw new Error(abort.signal.aborted
        ? `The server did not answer within ${timeoutMs / 1000} s`
        : `Could not reach the server (${e.message})`);
    } finally {
      clearTimeout(timer);
    }
    let body;
    try {
      body = JSON.parse(text);
    } catch (e) {
      const start = text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 80); // an HTML page's words
      throw new Error(`The server answered HTTP ${res.status} with a body that is not JSON` +
        (start ? ` ("${start}")` : " (empty)"));
    }
    if (!res.ok) {
      const err = new Error(body && body.error ? body.error.message : `HTTP ${res.status}`);
      err.refused = true;
      throw err;
    }
    return body;
  }

  // ---------------------------------------------------------------- guesses without a server
  // A static site from `doodle export --web` has models.json beside the page. Then the page answers its
  // own API questions in the page, with doodle.js running the model (ONNX Runtime Web): the same answers
  // in the same shapes, so everything above works unchanged. Without models.json (or with `doodle serve`'s
  // own answer there, format "doodle-rnn-server") it asks the server.
  let inPageApiPromise = null;

  function inPageApi() {
    inPageApiPromise ??= fetch("models.json")
      .then((r) => (r.ok ? r.json() : null))
      .catch(() => null)
      .then((site) => (site && site.format === "doodle-rnn-web" ? siteApi(site) : null));
    return inPageApiPromise;
  }

  async function siteApi(site) {
    const doodleJs = await import(new URL("static/doodle.js", document.baseURI).href);
    const loading = new Map(); // model name -> Promise<Recognizer>
    function recognizer(name) {
      const m = site.models.find((x) => x.name === (name || site.default));
      if (!m) return Promise.reject(Object.assign(new Error(`model: unknown model ${name}`), { refused: true }));
      if (!loading.has(m.name)) {
        loading.set(m.name, doodleJs.Recognizer.load(m.file).catch((e) => {
          loading.delete(m.name); // a later use tries again
          throw new Error(`Could not load the model in this page (${e.message})`);
        }));
      }
      return loading.get(m.name);
    }
    return async (path, init) => {
      const [route, query] = path.split("?");
      const body = init.body ? JSON.parse(init.body) : {};
      const name = body.model || new URLSearchParams(query || "").get("model");
      if (route === "api/models") {
        const models = site.models.map((m) => ({ ...m, default: m.name === site.default, loaded: loading.has(m.name) }));
        return { default: site.default, models };
      }
      const rec = await recognizer(name);
      if (route === "api/model") return { ...rec.info, name: rec.name, backend: "onnxruntime-web (wasm)" };
      if (route === "api/classes") return { classes: rec.classes };
      if (route !== "api/predict") throw new Error(`${route} is not part of a static site`);
      const p = await rec.analyze(body.strokes, body.top_k || 3);
      return {
        top: p.top.map(([c, q]) => ({ class: c, probability: q })),
        steps: p.steps,
        short: p.short,
        model_view: doodleJs.featuresToStrokes(p.features, rec.encoding),
      };
    };
  }

  function setStatus(text, isError) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", Boolean(isError));
  }

  function showGuesses(body, forVersion) {
    shownVersion = forVersion;
    const list = $("guesses");
    list.replaceChildren();
    if (!body) {
      lastResult = null;
      lastSentStrokes = null;
      drawModelView([]);
      setStatus("Start drawing: the guesses update as you go.", false);
      return;
    }
    body.top.forEach((g, i) => {
      const li = document.createElement("li");
      li.className = "guess";
      li.dataset.testid = `guess-${i}`;
      li.dataset.class = g.class;
      li.dataset.probability = String(g.probability);
      if (game.active && g.class === game.target) li.classList.add("hit");
      const name = document.createElement("span");
      name.className = "guess-class";
      name.textContent = g.class;
      const pct = document.createElement("span");
      pct.className = "guess-prob";
      pct.textContent = `${(g.probability * 100).toFixed(1)}%`;
      const track = document.createElement("div");
      track.className = "guess-track";
      const bar = document.createElement("div");
      bar.className = "guess-bar";
      bar.style.width = `${Math.max(0, Math.min(1, g.probability)) * 100}%`;
      track.append(bar);
      li.append(name, pct, track);
      list.append(li);
    });
    const top = body.top[0];
    if (!top) setStatus("Keep drawing…", false);
    else if (body.short) setStatus(`Only ${body.steps} steps so far: keep drawing for a surer guess.`, false);
    else setStatus(`I'm ${(top.probability * 100).toFixed(0)}% sure it's ${top.class}.`, false);
    drawModelView(body.model_view || []);
  }

  /** Announce, and win a game round, from an API answer for the strokes `sent` of the current drawing. */
  function judge(body, sent) {
    const top = body.top[0];
    if (!top) return;
    if (model.threshold === null) {
      if (game.active && top.class === game.target) gameWon(measure(sent)); // no threshold: the old rule
      return;
    }
    if (top.probability < model.threshold || announced) return;
    if (game.active && (top.class !== game.target || game.won)) return;
    announce(top, sent);
    if (game.active) gameWon(announced);
  }

  /** How much drawing an answer was given for: strokes, points, seconds since the first point. */
  function measure(sent) {
    const last = sent[sent.length - 1][2];
    return {
      strokes: sent.length,
      points: sent.reduce((n, s) => n + s[0].length, 0),
      seconds: last[last.length - 1] / 1000,
    };
  }

  function announce(top, sent) {
    announced = { class: top.class, probability: top.probability, ...measure(sent), drawing: sent };
    const el = $("announce");
    el.textContent = `I know: it's ${withArticle(top.class)}!`;
    el.dataset.class = top.class;
    el.dataset.strokes = String(announced.strokes);
    el.classList.toggle("hit", game.active);
    el.hidden = false;
  }

  function forgetAnnouncement() {
    drawingId++;
    announced = null;
    const el = $("announce");
    el.hidden = true;
    el.textContent = "";
    delete el.dataset.class;
    delete el.dataset.strokes;
  }

  function withArticle(name) {
    if (/^the\s/i.test(name)) return name;
    return `${/^[aeiou]/i.test(name) ? "an" : "a"} ${name}`;
  }

  /** The URL of an API path for the selected model (`?model=` once one is selected). */
  function forModel(path) {
    return modelName === null ? path : `${path}?model=${encodeURIComponent(modelName)}`;
  }

  /** The models the server offers, in the select: name, class count, the card's test top-1. */
  async function loadModels() {
    let list;
    try {
      list = await api("api/models", {}, LOAD_TIMEOUT_MS);
    } catch (e) {
      return; // an older server, or none: the page keeps to the default model
    }
    const select = $("model-select");
    select.replaceChildren(...list.models.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = modelOption(m);
      return option;
    }));
    modelName = modelName || list.default;
    select.value = modelName;
    select.parentElement.hidden = list.models.length < 2; // a choice of one is no choice
  }

  function modelOption(m) {
    let text = `${m.name} · ${m.classes} classes`;
    if (m.test && typeof m.test.top1 === "number") text += ` · test top-1 ${pct(m.test.top1)}`;
    return text;
  }

  /**
   * Switch to another model: its card (name, threshold) and classes, a new game round from its classes
   * when a game is on, and the drawing so far asked again. What the other model announced is forgotten.
   */
  async function selectModel(name) {
    modelName = name;
    game.classes = [];
    forgetAnnouncement();
    model.threshold = null;
    await loadModel();
    if (modelName !== name) return; // switched again meanwhile
    if (game.active) {
      try {
        await loadClasses();
      } catch (e) {
        showMode("free");
        stopGame();
        setStatus(`Could not go on with the game: ${e.message}.`, true);
        return;
      }
      nextRound();
    } else {
      version++;
      schedulePredict(true);
    }
  }
  $("model-select").addEventListener("change", (ev) => selectModel(ev.target.value));

  async function loadModel() {
    let info;
    try {
      info = await api(forModel("api/model"), {}, LOAD_TIMEOUT_MS);
    } catch (e) {
      if (modelName !== null) setStatus(`Could not load model ${modelName}: ${e.message}.`, true);
      return; // without a model name, the guesses report what is wrong with the server
    }
    const card = info.card || {};
    const t = card.announce_threshold;
    model.name = info.name || "";
    model.card = card;
    model.threshold = typeof t === "number" && t > 0 && t <= 1 ? t : null;
    const where = String(info.backend || "").startsWith("onnxruntime-web") ? " · runs in this browser" : "";
    $("model-info").textContent = modelLine(model.name, card.test, model.threshold) + where;
    const details = [];
    if (card.test && card.test.data) details.push(`test data: ${card.test.data}`);
    if (card.test && typeof card.test.top3 === "number") details.push(`top-3 ${pct(card.test.top3)}`);
    if (model.threshold !== null) {
      details.push(`says "I know" once its top guess is at least ${pct(model.threshold)} sure ` +
        "(a threshold chosen on validation drawings so that such calls are right 95% of the time)");
    }
    $("model-info").title = details.join("; ");
  }

  function modelLine(name, test, threshold) {
    let line = `Model: ${name || "unnamed"}`;
    if (test && typeof test.top1 === "number") {
      line += ` · test top-1 ${pct(test.top1)}`;
      if (typeof test.n_drawings === "number") line += ` on ${test.n_drawings.toLocaleString("en-US")} real drawings`;
    }
    if (threshold !== null) line += ` · says "I know" at ${pct(threshold)}`;
    return line;
  }

  function pct(p) {
    return `${(p * 100).toFixed(1)}%`;
  }

  function drawModelView(view) {
    const w = viewCanvas.width;
    const h = viewCanvas.height;
    viewCtx.clearRect(0, 0, w, h);
    const xs = view.flatMap((s) => s[0]);
    const ys = view.flatMap((s) => s[1]);
    if (!xs.length) return;
    const minX = Math.min(...xs), maxX = Math.max(...xs), minY = Math.min(...ys), maxY = Math.max(...ys);
    const pad = 12;
    const scale = Math.min((w - 2 * pad) / Math.max(maxX - minX, 1), (h - 2 * pad) / Math.max(maxY - minY, 1));
    const offX = (w - (maxX - minX) * scale) / 2;
    const offY = (h - (maxY - minY) * scale) / 2;
    strokeStyle(viewCtx, 2);
    for (const s of view) {
      drawStroke(viewCtx, s[0].map((v) => offX + (v - minX) * scale), s[1].map((v) => offY + (v - minY) * scale));
      viewCtx.fillStyle = "#e0a800"; // the points the model reads
      for (let i = 0; i < s[0].length; i++) {
        viewCtx.fillRect(offX + (s[0][i] - minX) * scale - 1.5, offY + (s[1][i] - minY) * scale - 1.5, 3, 3);
      }
    }
  }

  function settleIdle() {
    if (inflight || pending || throttleTimer) return;
    const waiters = idleWaiters;
    idleWaiters = [];
    waiters.forEach((resolve) => resolve());
  }

  // ---------------------------------------------------------------- undo / clear
  function undo() {
    if (activePointer !== null || !strokes.length) return;
    strokes.pop();
    if (!strokes.length) {
      t0 = null;
      forgetAnnouncement(); // nothing left: a new drawing
    }
    version++;
    redraw();
    schedulePredict(true);
  }

  function clearDrawing() {
    if (activePointer !== null) return;
    strokes = [];
    t0 = null;
    forgetAnnouncement();
    version++;
    redraw();
    schedulePredict(true);
  }

  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearDrawing);
  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "z") {
      ev.preventDefault();
      undo();
    }
  });

  // ---------------------------------------------------------------- game mode
  const game = {
    active: false, target: null, classes: [], score: 0, attempts: 0, deadline: 0, timer: null, won: false,
    rounds: [], // the rounds won: {target, seconds, points, strokes} at the moment the model got it
  };

  async function loadClasses() {
    if (game.classes.length) return game.classes;
    const classes = (await api(forModel("api/classes"), {}, LOAD_TIMEOUT_MS)).classes;
    if (!Array.isArray(classes) || !classes.length) throw new Error("The model has no classes to draw");
    game.classes = classes;
    return game.classes;
  }

  /** Game mode on, once the classes to draw are known; if they cannot be loaded, back to free drawing. */
  async function startGame() {
    try {
      await loadClasses();
    } catch (e) {
      if (mode !== "game") return; // the player left game mode meanwhile
      showMode("free");
      setStatus(`Could not start the game: ${e.refused ? `the server said ${e.message}` : e.message}.`, true);
      return;
    }
    if (mode !== "game") return; // the player left game mode meanwhile
    game.active = true;
    game.score = 0;
    game.attempts = 0;
    game.rounds = [];
    $("game").hidden = false;
    nextRound();
  }

  function stopGame() {
    game.active = false;
    clearInterval(game.timer);
    $("game").hidden = true;
  }

  function nextRound(forced) {
    clearInterval(game.timer);
    let target = forced || game.target;
    while (!forced && game.classes.length > 1 && target === game.target) {
      target = game.classes[Math.floor(Math.random() * game.classes.length)];
    }
    game.target = target;
    game.won = false;
    game.attempts++;
    game.deadline = performance.now() + GAME_SECONDS * 1000;
    $("game-target").textContent = target;
    $("game-message").textContent = "";
    updateGameStats();
    clearDrawing();
    game.timer = setInterval(tick, 200);
    tick();
  }

  function tick() {
    const left = Math.max(0, Math.ceil((game.deadline - performance.now()) / 1000));
    $("game-timer").textContent = String(left);
    $("game-timer").parentElement.classList.toggle("low", left <= 5);
    if (left === 0 && !game.won) {
      clearInterval(game.timer);
      $("game-message").textContent = `Time's up! It was ${game.target}.`;
      setTimeout(() => game.active && nextRound(), ROUND_PAUSE_MS);
    }
  }

  function gameWon(at) {
    if (game.won || performance.now() > game.deadline) return; // time's up: too late
    game.won = true;
    game.score++;
    game.rounds.push({ target: game.target, seconds: at.seconds, points: at.points, strokes: at.strokes });
    clearInterval(game.timer);
    updateGameStats();
    const s = at.strokes === 1 ? "" : "s";
    $("game-message").textContent =
      `Yes, it's ${game.target}! Got it after ${at.seconds.toFixed(1)} s, ${at.points} points (${at.strokes} stroke${s}).`;
    setTimeout(() => game.active && nextRound(), ROUND_PAUSE_MS);
  }

  function updateGameStats() {
    $("game-score").textContent = String(game.score);
    $("game-attempts").textContent = String(game.attempts);
    const won = game.rounds;
    $("game-avg").textContent = won.length
      ? `${(won.reduce((a, r) => a + r.seconds, 0) / won.length).toFixed(1)} s`
      : "–";
  }

  let mode = "free";

  /** The mode tabs show `m`; nothing else changes. */
  function showMode(m) {
    mode = m;
    const isGame = m === "game";
    $("mode-free").classList.toggle("active", !isGame);
    $("mode-game").classList.toggle("active", isGame);
    $("mode-free").setAttribute("aria-selected", String(!isGame));
    $("mode-game").setAttribute("aria-selected", String(isGame));
  }

  function setMode(m) {
    showMode(m);
    if (m === "game") startGame();
    else stopGame();
  }
  $("mode-free").addEventListener("click", () => setMode("free"));
  $("mode-game").addEventListener("click", () => setMode("game"));
  $("game-skip").addEventListener("click", () => game.active && nextRound());

  // ---------------------------------------------------------------- test and console hooks
  window.doodle = {
    /** The strokes captured so far, exactly as sent to the API: [[xs, ys, ts], ...]. */
    get strokes() {
      return payloadStrokes();
    },
    /** The API answer on screen, and the strokes it was for. */
    get result() {
      return lastResult;
    },
    get resultStrokes() {
      return lastSentStrokes;
    },
    get game() {
      return {
        mode, active: game.active, target: game.target, score: game.score, attempts: game.attempts,
        rounds: game.rounds.map((r) => ({ ...r })),
      };
    },
    /** The model: name, card, announce threshold (null: never announces); set once /api/model answered.
     * Another model is chosen with the select (#model-select). */
    get model() {
      return { ...model };
    },
    /** This drawing's announcement: class, probability, strokes, points, seconds and the strokes it was for. */
    get announced() {
      return announced && { ...announced };
    },
    undo,
    clear: clearDrawing,
    /** Game mode: start a round with this target (tests and demos; the game itself picks at random). */
    playRound(target) {
      if (game.active) nextRound(target);
    },
    /** Resolves once no request is in flight or waiting and the guesses shown are for the current drawing. */
    idle() {
      return new Promise((resolve) => {
        idleWaiters.push(resolve);
        if (!inflight && !pending && !throttleTimer && shownVersion === version) settleIdle();
        else if (!inflight && !throttleTimer) requestPredict();
      });
    },
  };

  window.addEventListener("resize", resizeCanvas);
  resizeCanvas();
  window.doodle.modelLoaded = inPageApi().then(loadModels).then(loadModel);
})();
