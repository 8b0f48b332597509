// palign app: questionnaire -> profile -> align -> talk. Plain JS, no library, no network
// other than this server. Answers live in localStorage; the API key (if any) in sessionStorage.
"use strict";

const LS_ANSWERS = "palign.answers.v1";
const LS_CURSOR = "palign.cursor.v1";
const LS_NAME = "palign.name.v1";
const SS_KEY = "palign.apikey";
const $ = (id) => document.getElementById(id);

const S = {
  info: null,
  items: [],
  answers: {},
  cursor: 0,
  model: null, // the fitted personality's /v1/models card
  history: { vanilla: [], aligned: [] },
  busy: false,
  fitting: false,
};

// --- helpers ---------------------------------------------------------------------------------
function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(SS_KEY);
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showMsg(text, kind) {
  const m = $("msg");
  if (!text) { m.hidden = true; m.textContent = ""; return; }
  m.textContent = text;
  m.className = kind === "info" ? "info" : "";
  m.hidden = false;
}

async function errorText(r) {
  try {
    const j = await r.json();
    if (j && j.error && j.error.message) return j.error.message;
  } catch (e) { /* not JSON */ }
  return "HTTP " + r.status;
}

async function api(path, opts) {
  opts = opts || {};
  let r;
  try {
    r = await fetch(path, Object.assign({}, opts, { headers: headers(opts.headers) }));
  } catch (e) {
    throw new Error("cannot reach the palign server (is it running?); your answers are kept in this browser");
  }
  if (r.status === 401) {
    askKey(await errorText(r));
    throw new Error("API key needed");
  }
  if (!r.ok) throw new Error(await errorText(r));
  return r;
}

function askKey(message) {
  $("keybox").hidden = false;
  showMsg(sessionStorage.getItem(SS_KEY) ? "Wrong API key: " + message : "This server needs an API key: " + message);
  $("apikey").focus();
}

// read an SSE body ("data: {...}" lines) from fetch, calling onEvent per JSON payload
async function readSSE(r, onEvent) {
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let k;
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, k);
      buf = buf.slice(k + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

function saveAnswers() {
  localStorage.setItem(LS_ANSWERS, JSON.stringify(S.answers));
  localStorage.setItem(LS_CURSOR, String(S.cursor));
}

function nAnswered() { return Object.keys(S.answers).length; }

// --- screens ---------------------------------------------------------------------------------
function show(screen) {
  for (const b of document.querySelectorAll("nav button")) {
    b.setAttribute("aria-selected", b.dataset.screen === screen ? "true" : "false");
  }
  for (const s of ["quiz", "profile", "talk"]) $("screen-" + s).hidden = s !== screen;
  if (screen === "profile") loadProfile();
  if (screen === "talk") renderTalk();
  if (screen === "quiz") $("card").focus();
}

// --- questionnaire ---------------------------------------------------------------------------
function renderQuiz() {
  const n = S.items.length;
  const it = S.items[S.cursor];
  const a = nAnswered();
  $("quiz-bar").style.width = (100 * a / n) + "%";
  $("quiz-count").textContent = a + " of " + n + " statements answered";
  $("q-pos").textContent = "Statement " + (S.cursor + 1) + " of " + n;
  $("q-text").textContent = it.text;
  for (const b of $("q-answers").children) {
    b.setAttribute("aria-pressed", S.answers[it.id] === Number(b.dataset.v) ? "true" : "false");
  }
  const cells = $("grid").children;
  for (let i = 0; i < cells.length; i++) {
    cells[i].className = (S.answers[S.items[i].id] ? "done" : "") + (i === S.cursor ? " cur" : "");
  }
}

function answer(v) {
  const it = S.items[S.cursor];
  if (v) S.answers[it.id] = v; else delete S.answers[it.id];
  if (v && S.cursor < S.items.length - 1) S.cursor += 1;
  saveAnswers();
  renderQuiz();
}

function move(d) {
  S.cursor = Math.max(0, Math.min(S.items.length - 1, S.cursor + d));
  saveAnswers();
  renderQuiz();
}

function nextUnanswered() {
  const n = S.items.length;
  for (let k = 1; k <= n; k++) {
    const i = (S.cursor + k) % n;
    if (!S.answers[S.items[i].id]) { S.cursor = i; break; }
  }
  saveAnswers();
  renderQuiz();
}

function buildQuiz() {
  const box = $("q-answers");
  box.innerHTML = "";
  for (const s of S.info.scale) { // 1..5
    const b = document.createElement("button");
    b.dataset.v = s.value;
    b.id = "ans-" + s.value;
    b.innerHTML = "<kbd>" + s.value + "</kbd>";
    b.appendChild(document.createTextNode(s.label));
    b.addEventListener("click", () => answer(s.value));
    box.appendChild(b);
  }
  const grid = $("grid");
  grid.innerHTML = "";
  S.items.forEach((it, i) => {
    const c = document.createElement("button");
    c.title = (i + 1) + ". " + it.text;
    c.setAttribute("aria-label", "statement " + (i + 1));
    c.addEventListener("click", () => { S.cursor = i; saveAnswers(); renderQuiz(); });
    grid.appendChild(c);
  });
  renderQuiz();
}

document.addEventListener("keydown", (e) => {
  if ($("screen-quiz").hidden || !S.items.length) return;
  const t = e.target;
  if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA")) return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key >= "1" && e.key <= "5") { answer(Number(e.key)); e.preventDefault(); }
  else if (e.key === "0" || e.key === "Backspace" || e.key === "Delete") { answer(0); e.preventDefault(); }
  else if (e.key === "ArrowRight" || e.key === "ArrowDown") { move(1); e.preventDefault(); }
  else if (e.key === "ArrowLeft" || e.key === "ArrowUp") { move(-1); e.preventDefault(); }
});

// --- profile ---------------------------------------------------------------------------------
const X0 = 190, W = 420;
const xs = (v) => X0 + (v - 1) / 4 * W;
const ROW_H = 34;
const chartBox = (n) => "0 0 " + (X0 + W + 170) + " " + (n * ROW_H + 30);

function chart(rows) {
  const h = ROW_H;
  const H = rows.length * h + 30;
  let s = '<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="' + chartBox(rows.length) + '" role="img">';
  for (let v = 1; v <= 5; v++) {
    s += '<line x1="' + xs(v) + '" x2="' + xs(v) + '" y1="4" y2="' + (H - 22) + '" stroke="#e4e7ec"/>';
    s += '<text x="' + xs(v) + '" y="' + (H - 6) + '" text-anchor="middle">' + v + "</text>";
  }
  rows.forEach((r, i) => {
    const y = 8 + i * h, cy = y + 12;
    s += '<text x="' + (X0 - 10) + '" y="' + (cy + 4) + '" text-anchor="end">' + esc(r.name) + " (" + r.key + ")</text>";
    const q = r.population.quantiles;
    if (q) {
      s += '<line x1="' + xs(q.p5) + '" x2="' + xs(q.p95) + '" y1="' + cy + '" y2="' + cy + '" stroke="#98a2b3" stroke-width="2"/>';
      s += '<rect x="' + xs(q.p25) + '" y="' + (cy - 8) + '" width="' + Math.max(1, xs(q.p75) - xs(q.p25)) + '" height="16" fill="#d6def5" stroke="#98a2b3"/>';
      s += '<line x1="' + xs(q.p50) + '" x2="' + xs(q.p50) + '" y1="' + (cy - 8) + '" y2="' + (cy + 8) + '" stroke="#475467" stroke-width="2"/>';
    }
    if (r.score !== null) {
      s += '<circle class="you" cx="' + xs(r.score) + '" cy="' + cy + '" r="7" fill="#d92d20" stroke="#fff" stroke-width="2"/>';
      s += '<text x="' + (X0 + W + 12) + '" y="' + (cy + 4) + '">' + r.score.toFixed(2) + " &#183; " + ordinal(r.percentile) + " pct &#183; " + r.answered + "/" + r.items + "</text>";
    } else {
      s += '<text x="' + (X0 + W + 12) + '" y="' + (cy + 4) + '" fill="#667085">no answer yet</text>';
    }
  });
  return s + "</svg>";
}

function ordinal(p) { return p === null ? "-" : Math.round(p) + (["th", "st", "nd", "rd"][Math.round(p) % 10 > 3 || [11, 12, 13].includes(Math.round(p) % 100) ? 0 : Math.round(p) % 10]); }
function esc(t) { return String(t).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }

async function loadProfile() {
  const n = nAnswered(), N = S.items.length;
  renderAlignBox();
  if (!n) {
    $("prof-note").textContent = "No answers yet: answer some statements first (tab 1).";
    $("prof-chart").innerHTML = ""; $("prof-facets").innerHTML = "";
    return;
  }
  $("prof-semantics").textContent = "Scoring (as palign data person): answers are your agreement with each statement (5 = Very Accurate, 1 = Very Inaccurate); " +
    "for reverse-keyed statements the answer is flipped (6 - answer) so high always means more of the trait; a score is the mean over the answered statements of that trait or facet (1..5). " +
    "Percentile: the share of the release's persons scoring below you (ties count half), on the same statements.";
  // until the profile arrives, an empty chart of the final size holds the place, so that the
  // buttons below do not move under a click
  if (!$("prof-chart").innerHTML) $("prof-chart").innerHTML = '<svg width="100%" viewBox="' + chartBox(S.info.traits.length) + '"></svg>';
  let p;
  try {
    p = await (await api("/app/api/profile", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ answers: S.answers }) })).json();
  } catch (e) { showMsg(e.message); return; }
  $("prof-note").innerHTML = "Your profile from <b id=\"prof-n\">" + p.answered + "</b> of " + p.items + " answered statements" +
    (p.answered < p.items ? " (" + (p.items - p.answered) + " unanswered: the scores use only the answered ones)" : "") +
    ". Red dot: you; box: the middle half of the " + p.population.persons + " persons of the PAPI release (" + esc(p.population.source) +
    "), line: 5th to 95th percentile, dark tick: median. Right: your score, percentile, answered items.";
  $("prof-chart").innerHTML = chart(p.traits);
  $("prof-facets").innerHTML = chart(p.facets);
  window.__palignProfile = p; // for tests and the curious
}

function renderAlignBox() {
  const n = nAnswered(), N = S.items.length, o = S.info.fit.options;
  $("align-what").textContent = "Fits PAS on the served model " + S.info.base + " from your " + n + " answer" + (n === 1 ? "" : "s") +
    (n < N ? " (of " + N + "; only the answered statements are used)" : "") + ": the best heads are steered at all positions, and the strength alpha is chosen on answers held out of the fit" +
    " (grid " + (o.alpha_grid || "default").toString() + ", " + (o.folds || 3) + " folds, " + (o.k || 24) + " heads).";
  $("align").disabled = S.fitting;
  $("fit-actions").hidden = !S.model;
}

async function startFit() {
  showMsg("");
  const n = nAnswered();
  if (n < S.info.fit.min_answers) {
    showMsg("Answer at least " + S.info.fit.min_answers + " statements before aligning (you have " + n + "); more answers give a better fit.");
    return;
  }
  const name = $("pname").value.trim();
  localStorage.setItem(LS_NAME, name);
  try {
    await api("/app/api/fit", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name: name, answers: S.answers }) });
  } catch (e) {
    showMsg(e.message);
    if (/already running/.test(e.message)) followFit();
    return;
  }
  followFit();
}

async function followFit() {
  S.fitting = true;
  renderAlignBox();
  $("fit-progress").hidden = false;
  let last = null;
  try {
    const r = await api("/app/api/fit/events");
    await readSSE(r, (ev) => {
      last = ev;
      if (ev.status === "running") {
        $("fit-status").textContent = "Fitting " + ev.name + " on " + ev.n_answers + " answers... " + ev.elapsed.toFixed(1) + " s, " + ev.forwards + " model batches run so far. You can keep using the page.";
      }
    });
  } catch (e) {
    last = { status: "lost", message: e.message };
  }
  S.fitting = false;
  $("fit-progress").hidden = true;
  if (last && last.status === "done") {
    S.model = last.model;
    localStorage.setItem(LS_NAME, last.name);
    const c = last.model.palign;
    $("fit-status").textContent = "Done in " + last.elapsed.toFixed(1) + " s: " + last.model.id + " fitted on " + last.n_answers + " of " + S.items.length +
      " answers, alpha " + c.alpha + " (chosen on held-out answers), " + c.heads + " heads, steering at " + c.steer_position + " positions. It is listed in /v1/models.";
    $("alpha").value = c.alpha;
  } else if (last && last.status === "error") {
    $("fit-status").textContent = "";
    showMsg(last.message + " (your answers are kept in this browser)");
  } else if (last && last.status !== "idle") {
    $("fit-status").textContent = "";
    showMsg("Lost the connection to the server during the fit (was it stopped or restarted?). Your answers are kept in this browser; when the server is back, press Align again.");
  }
  renderAlignBox();
}

async function download() {
  showMsg("");
  try {
    const r = await api("/app/api/personalities/" + encodeURIComponent(S.model.id.split(":").pop()) + "/adapter.zip");
    const blob = await r.blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    const cd = r.headers.get("content-disposition") || "";
    const m = /filename="([^"]+)"/.exec(cd);
    a.download = m ? m[1] : "adapter.zip";
    document.body.appendChild(a);
    a.click();
    a.remove();
    showMsg("Downloaded " + a.download + " (unzip it and use it with palign generate/chat --adapter).", "info");
  } catch (e) { showMsg(e.message); }
}

async function del() {
  showMsg("");
  if (S.fitting) { showMsg("A fit is running; wait for it to finish before deleting."); return; }
  const name = S.model ? S.model.id.split(":").pop() : $("pname").value.trim();
  try {
    await api("/v1/personalities/" + encodeURIComponent(name), { method: "DELETE" });
  } catch (e) {
    if (!/no personality/.test(e.message)) { showMsg(e.message); return; }
  }
  S.model = null;
  S.answers = {};
  S.cursor = 0;
  saveAnswers();
  localStorage.removeItem(LS_NAME);
  renderQuiz();
  renderAlignBox();
  $("fit-status").textContent = "";
  $("prof-chart").innerHTML = ""; $("prof-facets").innerHTML = "";
  $("prof-note").textContent = "No answers yet: answer some statements first (tab 1).";
  showMsg("Deleted personality " + name + " from the server and your answers from this browser.", "info");
}

// --- talk ------------------------------------------------------------------------------------
function alignedName() { return S.model ? S.model.id : null; }

function renderTalk() {
  $("col-vanilla-title").textContent = "Vanilla: " + S.info.base;
  $("col-aligned-title").textContent = S.model ? "Aligned: " + S.model.id : "Aligned: fit a personality first (tab 2)";
  $("alpha-out").textContent = $("alpha").value;
  renderRepro();
}

function renderRepro() {
  const alpha = Number($("alpha").value), seed = Number($("seed").value), temp = Number($("temp").value), maxtok = Number($("maxtok").value);
  const base = location.origin + "/v1";
  const key = sessionStorage.getItem(SS_KEY) ? "YOUR_API_KEY" : "none";
  // the last request sent: the conversation up to the last user turn
  const upToUser = (h) => { const k = h.map((m) => m.role).lastIndexOf("user"); return k >= 0 ? h.slice(0, k + 1) : [{ role: "user", content: "Hello" }]; };
  const msgs = upToUser(S.history.aligned);
  const vmsgs = upToUser(S.history.vanilla);
  const first = msgs[0].content;
  const path = S.model && S.model.palign.path ? S.model.palign.path : "ADAPTER_FOLDER";
  const sh = (t) => "'" + String(t).replace(/'/g, "'\\''") + "'";
  let t = "# first turn, aligned column (the downloaded adapter, unzipped, works the same):\n" +
    "palign generate --adapter " + sh(path) + " --alpha " + alpha + " --temperature " + temp + " --seed " + seed + " --max-new-tokens " + maxtok + " " + sh(first) + "\n" +
    "# the whole conversation, interactively (type the same messages):\n" +
    "palign chat --adapter " + sh(path) + " --alpha " + alpha + " --temperature " + temp + " --seed " + seed + " --max-new-tokens " + maxtok + "\n\n" +
    "# the last requests this page sent, with the openai client:\n" +
    "from openai import OpenAI\n" +
    "client = OpenAI(base_url=" + JSON.stringify(base) + ", api_key=" + JSON.stringify(key) + ")\n" +
    "vanilla = client.chat.completions.create(model=" + JSON.stringify(S.info.base) + ", messages=" + JSON.stringify(vmsgs) +
    ", temperature=" + temp + ", seed=" + seed + ", max_tokens=" + maxtok + ")\n";
  if (S.model) {
    t += "aligned = client.chat.completions.create(model=" + JSON.stringify(S.model.id) + ", messages=" + JSON.stringify(msgs) +
      ", temperature=" + temp + ", seed=" + seed + ", max_tokens=" + maxtok + ", extra_body={\"alpha\": " + alpha + "})\n";
  }
  $("repro").textContent = t;
}

function addTurn(col, role, text) {
  const d = document.createElement("div");
  d.className = "turn " + role;
  d.textContent = text;
  $("col-" + col).appendChild(d);
  $("col-" + col).scrollTop = 1e9;
  return d;
}

async function streamTo(col, model, extra) {
  const msgs = S.history[col];
  const out = addTurn(col, "bot", "");
  const body = Object.assign({
    model: model, messages: msgs, stream: true,
    temperature: Number($("temp").value), seed: Number($("seed").value), max_tokens: Number($("maxtok").value),
  }, extra || {});
  let text = "";
  try {
    const r = await api("/v1/chat/completions", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    await readSSE(r, (ev) => {
      if (ev.error) throw new Error(ev.error.message);
      const d = ev.choices && ev.choices[0] && ev.choices[0].delta;
      if (d && d.content) { text += d.content; out.textContent = text; $("col-" + col).scrollTop = 1e9; }
    });
    msgs.push({ role: "assistant", content: text });
    out.dataset.done = "1";
  } catch (e) {
    msgs.pop(); // the user turn that failed is not part of the conversation
    out.className = "turn err";
    out.textContent = "error: " + e.message;
    out.dataset.done = "1";
    throw e;
  }
}

async function send(ev) {
  ev.preventDefault();
  if (S.busy) return;
  const text = $("chatin").value;
  if (!text.trim()) return;
  showMsg("");
  S.busy = true;
  $("send").disabled = true;
  const jobs = [];
  S.history.vanilla.push({ role: "user", content: text });
  addTurn("vanilla", "user", text);
  jobs.push(streamTo("vanilla", S.info.base));
  if (S.model) {
    S.history.aligned.push({ role: "user", content: text });
    addTurn("aligned", "user", text);
    jobs.push(streamTo("aligned", S.model.id, { alpha: Number($("alpha").value) }));
  }
  const res = await Promise.allSettled(jobs);
  const bad = res.find((x) => x.status === "rejected");
  if (bad) showMsg(bad.reason.message + " (your message is still in the box)");
  else $("chatin").value = "";
  S.busy = false;
  $("send").disabled = false;
  renderRepro();
}

// --- start -----------------------------------------------------------------------------------
async function boot() {
  showMsg("");
  let info;
  try {
    info = await (await api("/app/api/info")).json();
  } catch (e) {
    if (e.message !== "API key needed") showMsg(e.message);
    return;
  }
  $("keybox").hidden = true;
  S.info = info;
  S.items = info.items;
  $("model").textContent = "model " + info.base + " (" + info.model_id + ")";
  $("datafolder").textContent = info.data_folder;
  try { S.answers = JSON.parse(localStorage.getItem(LS_ANSWERS) || "{}") || {}; } catch (e) { S.answers = {}; }
  const ids = new Set(S.items.map((x) => x.id));
  for (const k of Object.keys(S.answers)) if (!ids.has(k) || !(S.answers[k] >= 1 && S.answers[k] <= 5)) delete S.answers[k];
  S.cursor = Math.min(S.items.length - 1, Math.max(0, Number(localStorage.getItem(LS_CURSOR) || 0)));
  const name = localStorage.getItem(LS_NAME);
  if (name) $("pname").value = name;
  const models = await (await api("/v1/models")).json();
  S.model = models.data.find((m) => m.id === info.base + ":" + $("pname").value.trim()) || null;
  if (S.model) $("alpha").value = S.model.palign.alpha;
  buildQuiz();
  renderAlignBox();
  if (info.job && info.job.status === "running") followFit();
  document.body.dataset.ready = "1";
}

function wire() {
  for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => show(b.dataset.screen));
  $("q-prev").addEventListener("click", () => move(-1));
  $("q-next").addEventListener("click", () => move(1));
  $("q-skip").addEventListener("click", nextUnanswered);
  $("q-done").addEventListener("click", () => show("profile"));
  $("q-clear").addEventListener("click", () => { S.answers = {}; S.cursor = 0; saveAnswers(); renderQuiz(); });
  $("align").addEventListener("click", startFit);
  $("download").addEventListener("click", download);
  $("delete").addEventListener("click", del);
  $("go-talk").addEventListener("click", () => show("talk"));
  $("chatform").addEventListener("submit", send);
  $("chatin").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e); });
  for (const id of ["alpha", "seed", "temp", "maxtok"]) $(id).addEventListener("input", () => { $("alpha-out").textContent = $("alpha").value; renderRepro(); });
  $("reset").addEventListener("click", () => { S.history = { vanilla: [], aligned: [] }; $("col-vanilla").innerHTML = ""; $("col-aligned").innerHTML = ""; renderRepro(); });
  $("keyform").addEventListener("submit", (e) => { e.preventDefault(); sessionStorage.setItem(SS_KEY, $("apikey").value); boot(); });
}

wire();
boot();
