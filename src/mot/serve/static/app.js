// mot chat: a dependency-free client of the server's OpenAI-compatible API.
// Threads, settings and the theme live in localStorage; the API key lives in sessionStorage only (this tab,
// until it closes), never in localStorage, where it would stay on disk in plain text. Replies stream over SSE
// (fetch + ReadableStream).
"use strict";

(() => {
  const STORE = { threads: "mot.threads", current: "mot.currentThread", settings: "mot.settings", theme: "mot.theme",
                  apiKey: "mot.apiKey" };
  const $ = (id) => document.getElementById(id);
  const el = {
    app: $("app"), threads: $("threads"), newThread: $("new-thread"), messages: $("messages"), composer: $("composer"),
    prompt: $("prompt"), send: $("send"), stop: $("stop"), model: $("model"), status: $("status"),
    settings: $("settings"), settingsToggle: $("settings-toggle"), theme: $("theme-toggle"), themeName: $("theme-name"),
    menu: $("menu"), scrim: $("scrim"), temperature: $("temperature"), temperatureValue: $("temperature-value"),
    maxTokens: $("max-tokens"), topK: $("top-k"), topP: $("top-p"), topPValue: $("top-p-value"),
    system: $("system-prompt"), apiKey: $("api-key"),
  };

  const load = (key, fallback) => {
    try { const v = JSON.parse(localStorage.getItem(key)); return v === null ? fallback : v; } catch { return fallback; }
  };
  const save = (key, value) => localStorage.setItem(key, JSON.stringify(value));
  const newId = () => Date.now().toString(36) + Math.random().toString(36).slice(2, 8);

  let threads = load(STORE.threads, []);
  let currentId = load(STORE.current, null);
  let active = null; // {controller, threadId} while a reply streams

  // ---------------------------------------------------------------- theme
  function applyTheme(theme) {
    document.documentElement.dataset.theme = theme;
    el.themeName.textContent = theme;
  }
  const prefersDark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  applyTheme(load(STORE.theme, prefersDark ? "dark" : "light"));
  el.theme.addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    applyTheme(next);
    save(STORE.theme, next);
  });

  // ---------------------------------------------------------------- settings
  const settingInputs = { temperature: el.temperature, max_tokens: el.maxTokens, top_k: el.topK, top_p: el.topP,
                          system: el.system };
  const stored = load(STORE.settings, {});
  for (const [key, input] of Object.entries(settingInputs)) {
    if (stored[key] !== undefined) input.value = stored[key];
    input.addEventListener("input", () => { showSettingValues(); saveSettings(); });
  }
  // The key: for this tab only. A key an older version left in localStorage moves here and is erased there.
  if (stored.api_key !== undefined) {
    if (stored.api_key && !sessionStorage.getItem(STORE.apiKey)) sessionStorage.setItem(STORE.apiKey, stored.api_key);
    delete stored.api_key;
    save(STORE.settings, stored);
  }
  el.apiKey.value = sessionStorage.getItem(STORE.apiKey) || "";
  el.apiKey.addEventListener("input", () => {
    if (el.apiKey.value) sessionStorage.setItem(STORE.apiKey, el.apiKey.value);
    else sessionStorage.removeItem(STORE.apiKey);
  });
  function saveSettings() {
    const values = {};
    for (const [key, input] of Object.entries(settingInputs)) values[key] = input.value;
    values.model = el.model.value || stored.model;
    save(STORE.settings, values);
  }
  function showSettingValues() {
    el.temperatureValue.textContent = Number(el.temperature.value).toFixed(2);
    el.topPValue.textContent = Number(el.topP.value).toFixed(2);
  }
  showSettingValues();
  el.settingsToggle.addEventListener("click", () => {
    el.settings.hidden = !el.settings.hidden;
    el.settingsToggle.setAttribute("aria-expanded", String(!el.settings.hidden));
  });

  function headers() {
    const h = { "Content-Type": "application/json" };
    if (el.apiKey.value) h.Authorization = "Bearer " + el.apiKey.value;
    return h;
  }

  // ---------------------------------------------------------------- models
  async function loadModels() {
    try {
      const response = await fetch("/v1/models", { headers: headers() });
      const body = await response.json();
      if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
      el.model.replaceChildren();
      for (const card of body.data) {
        const option = document.createElement("option");
        option.value = card.id;
        option.textContent = card.id + (card.routed ? "  (routed)" : "") + (card.kind ? "  · " + card.kind : "");
        el.model.append(option);
      }
      if (stored.model && body.data.some((c) => c.id === stored.model)) el.model.value = stored.model;
      setStatus(body.data.length ? "" : "The server has no models.");
    } catch (err) {
      setStatus("Could not list models: " + err.message + (el.apiKey.value ? "" : " (an API key may be needed: see Settings)"));
    }
  }
  el.model.addEventListener("change", saveSettings);
  el.apiKey.addEventListener("change", loadModels);

  // ---------------------------------------------------------------- threads
  function currentThread() { return threads.find((t) => t.id === currentId) || null; }
  function persist() { save(STORE.threads, threads); save(STORE.current, currentId); }
  let persistTimer = null;
  function persistSoon() {
    if (persistTimer) return;
    persistTimer = setTimeout(() => { persistTimer = null; persist(); }, 150);
  }

  function createThread() {
    const thread = { id: newId(), title: "New chat", messages: [], created: Date.now() };
    threads.unshift(thread);
    currentId = thread.id;
    persist();
    render();
    return thread;
  }

  function selectThread(id) {
    currentId = id;
    persist();
    closeDrawer();
    render();
  }

  function deleteThread(id) {
    if (active && active.threadId === id) active.controller.abort();
    threads = threads.filter((t) => t.id !== id);
    if (currentId === id) currentId = threads.length ? threads[0].id : null;
    persist();
    render();
  }

  function renderThreads() {
    el.threads.replaceChildren();
    for (const thread of threads) {
      const li = document.createElement("li");
      li.dataset.threadId = thread.id;
      if (thread.id === currentId) li.classList.add("active");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "thread-open";
      open.textContent = thread.title || "New chat";
      open.title = thread.title || "New chat";
      open.addEventListener("click", () => selectThread(thread.id));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "thread-delete";
      remove.setAttribute("aria-label", "Delete conversation");
      remove.textContent = "\u00d7";
      remove.addEventListener("click", () => deleteThread(thread.id));
      li.append(open, remove);
      el.threads.append(li);
    }
  }

  // ---------------------------------------------------------------- messages
  function messageNode(message) {
    const node = document.createElement("div");
    node.className = "message " + message.role;
    if (message.error) node.classList.add("error");
    const content = document.createElement("div");
    content.className = "content";
    content.textContent = message.error ? message.error : message.content;
    node.append(content);
    const meta = metaNode(message);
    if (meta) node.append(meta);
    return node;
  }

  function metaNode(message) {
    if (message.role !== "assistant") return null;
    const parts = [];
    const chip = (text, cls) => {
      const span = document.createElement("span");
      span.className = "chip" + (cls ? " " + cls : "");
      span.textContent = text;
      parts.push(span);
    };
    if (message.model) chip(message.model);
    const routing = message.routing;
    if (routing) {
      chip("primary: " + routing.primary_expert, "primary-expert");
      const weights = routing.expert_weights || {};
      for (const name of routing.active_experts || []) {
        chip(name + (weights[name] !== undefined ? " " + Number(weights[name]).toFixed(2) : ""), "expert");
      }
    }
    if (message.usage) chip(message.usage.completion_tokens + " tokens");
    if (message.seconds) chip(message.seconds.toFixed(1) + " s");
    if (message.stopped) chip("stopped");
    if (message.interrupted) chip("interrupted");
    if (!parts.length) return null;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.append(...parts);
    return meta;
  }

  function renderMessages() {
    const thread = currentThread();
    el.messages.replaceChildren();
    if (!thread || !thread.messages.length) {
      const empty = document.createElement("div");
      empty.className = "empty";
      empty.textContent = "Pick a model and send a message. Conversations stay in this browser.";
      el.messages.append(empty);
      return;
    }
    for (const message of thread.messages) el.messages.append(messageNode(message));
    if (active && active.threadId === thread.id) el.messages.lastElementChild.classList.add("streaming");
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  function render() {
    renderThreads();
    renderMessages();
    const busy = Boolean(active);
    el.send.hidden = busy;
    el.stop.hidden = !busy;
  }

  function setStatus(text) { el.status.textContent = text; }

  // ---------------------------------------------------------------- sending
  function requestBody(thread) {
    const history = thread.messages.filter((m) => !m.error && (m.role === "user" || m.content));
    const messages = history.map((m) => ({ role: m.role, content: m.content }));
    if (el.system.value.trim()) messages.unshift({ role: "system", content: el.system.value.trim() });
    const body = {
      model: el.model.value,
      messages,
      stream: true,
      stream_options: { include_usage: true },
      temperature: Number(el.temperature.value),
      max_tokens: Math.max(1, parseInt(el.maxTokens.value, 10) || 256),
      top_p: Number(el.topP.value),
    };
    const topK = parseInt(el.topK.value, 10) || 0;
    if (topK > 0) body.top_k = topK;
    return body;
  }

  async function send(text) {
    if (active) return;
    if (!el.model.value) { setStatus("No model selected."); return; }
    const thread = currentThread() || createThread();
    thread.messages.push({ role: "user", content: text });
    if (thread.title === "New chat") thread.title = text.slice(0, 48);
    const body = requestBody(thread);
    const reply = { role: "assistant", content: "", model: body.model, pending: true };
    thread.messages.push(reply);
    const controller = new AbortController();
    active = { controller, threadId: thread.id };
    persist();
    render();
    const started = performance.now();
    setStatus("Generating…");
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!response.ok) {
        let message = response.status + " " + response.statusText;
        try { const err = await response.json(); if (err.error) message = err.error.message; } catch { /* not JSON */ }
        throw new Error(message);
      }
      await readEvents(response.body, (event) => {
        if (event.error) throw new Error(event.error.message);
        if (event.routing) reply.routing = event.routing;
        if (event.usage) reply.usage = event.usage;
        const choice = event.choices && event.choices[0];
        if (choice && choice.delta && choice.delta.content) {
          reply.content += choice.delta.content;
          updateLast(thread, reply);
        }
      });
      setStatus("");
    } catch (err) {
      if (err.name === "AbortError") {
        reply.stopped = true;
        setStatus("Stopped.");
      } else {
        reply.error = err.message;
        setStatus("");
      }
    } finally {
      reply.seconds = (performance.now() - started) / 1000;
      delete reply.pending;
      active = null;
      persist();
      render();
    }
  }

  function updateLast(thread, reply) {
    persistSoon();
    if (thread.id !== currentId) return;
    const last = el.messages.lastElementChild;
    if (!last) return;
    last.querySelector(".content").textContent = reply.content;
    const oldMeta = last.querySelector(".meta");
    const meta = metaNode(reply);
    if (oldMeta) oldMeta.remove();
    if (meta) last.append(meta);
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  // Parse a Server-Sent Events body: one JSON object per "data:" line, until "data: [DONE]".
  async function readEvents(stream, onEvent) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") { reader.cancel(); return; }
        onEvent(JSON.parse(data));
      }
    }
  }

  // ---------------------------------------------------------------- wiring
  el.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.prompt.value.trim();
    if (!text || active) return;
    el.prompt.value = "";
    autosize();
    send(text);
  });
  el.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      el.composer.requestSubmit();
    }
  });
  function autosize() {
    el.prompt.style.height = "auto";
    el.prompt.style.height = Math.min(el.prompt.scrollHeight + 2, window.innerHeight * 0.4) + "px";
  }
  el.prompt.addEventListener("input", autosize);
  el.stop.addEventListener("click", () => { if (active) active.controller.abort(); });
  el.newThread.addEventListener("click", () => { createThread(); closeDrawer(); el.prompt.focus(); });

  function closeDrawer() { el.app.classList.remove("drawer-open"); el.scrim.hidden = true; }
  el.menu.addEventListener("click", () => {
    const open = el.app.classList.toggle("drawer-open");
    el.scrim.hidden = !open;
  });
  el.scrim.addEventListener("click", closeDrawer);

  window.addEventListener("storage", (event) => {
    if (event.key === STORE.threads && !active) { threads = load(STORE.threads, []); render(); }
  });

  // A reply still pending when the page went away (reload, closed tab) was cut short.
  for (const thread of threads) {
    for (const message of thread.messages) {
      if (message.pending) { delete message.pending; message.interrupted = true; }
    }
  }
  if (!currentThread()) currentId = threads.length ? threads[0].id : null;
  render();
  loadModels();
})();
