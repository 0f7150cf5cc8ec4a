// The drawing page: capture raw pen strokes (x, y, t per point), send them as they are, show guesses.
//
// Nothing here preprocesses a drawing: the server normalises and encodes exactly as training did, so
// the page only records what the pointer did (CSS pixels of the canvas, milliseconds since the first
// point) and displays what the API answers, including the drawing as the model saw it.
"use strict";

(() => {
  const THROTTLE_MS = 250; // at most one guess request this often while a stroke is being drawn
  const GAME_SECONDS = 20;

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
    if (!sent.length) {
      showGuesses(null, sentVersion);
      settleIdle();
      return;
    }
    inflight = true;
    pending = false;
    lastSent = performance.now();
    try {
      const res = await fetch("/api/predict", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ strokes: sent, top_k: 3 }),
      });
      const body = await res.json();
      if (!res.ok) {
        const err = body && body.error ? body.error.message : `HTTP ${res.status}`;
        shownVersion = sentVersion;
        setStatus(`The server refused the drawing: ${err}`, true);
      } else {
        lastSentStrokes = sent;
        lastResult = body;
        showGuesses(body, sentVersion);
      }
    } catch (e) {
      shownVersion = sentVersion;
      setStatus(`Could not reach the server (${e.message}).`, true);
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
    if (game.active && top && top.class === game.target) gameWon();
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
    if (!strokes.length) t0 = null;
    version++;
    redraw();
    schedulePredict(true);
  }

  function clearDrawing() {
    if (activePointer !== null) return;
    strokes = [];
    t0 = null;
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
  const game = { active: false, target: null, classes: [], score: 0, attempts: 0, deadline: 0, timer: null, won: false };

  async function loadClasses() {
    if (game.classes.length) return game.classes;
    const res = await fetch("/api/classes");
    game.classes = (await res.json()).classes;
    return game.classes;
  }

  async function startGame() {
    await loadClasses();
    game.active = true;
    game.score = 0;
    game.attempts = 0;
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
      setTimeout(() => game.active && nextRound(), 1500);
    }
  }

  function gameWon() {
    if (game.won) return;
    game.won = true;
    game.score++;
    clearInterval(game.timer);
    updateGameStats();
    $("game-message").textContent = `Yes, it's ${game.target}!`;
    setTimeout(() => game.active && nextRound(), 1500);
  }

  function updateGameStats() {
    $("game-score").textContent = String(game.score);
    $("game-attempts").textContent = String(game.attempts);
  }

  function setMode(mode) {
    const isGame = mode === "game";
    $("mode-free").classList.toggle("active", !isGame);
    $("mode-game").classList.toggle("active", isGame);
    $("mode-free").setAttribute("aria-selected", String(!isGame));
    $("mode-game").setAttribute("aria-selected", String(isGame));
    if (isGame) startGame();
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
      return { active: game.active, target: game.target, score: game.score, attempts: game.attempts };
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
})();
