// <c3-conversation>: one C3 context conversation in the customer's page.
//
// Dependency-free (no framework, no Matrix SDK): it speaks the Matrix Client-Server API
// directly to the homeserver the credential names (the tenant's homeserver through the C3
// proxy). The customer's backend gets the credential from POST …/contexts/{ref}/participants
// and hands it to the element:
//
//   <script type="module" src="https://api.example.com/widget/0.1.0/c3-conversation.js"></script>
//   <c3-conversation></c3-conversation>
//   <script type="module">
//     document.querySelector("c3-conversation").credential = await (await fetch("/my/credential")).json();
//   </script>
//
// The access token lives in memory only. sessionStorage (keyed by user and room) keeps the
// transaction counter and the messages not yet accepted by the homeserver, so a reload never
// reuses a transaction id and never sends a message twice. Documented in docs/widget.md.

const SYNC_TIMEOUT_MS = 30000;
const TIMELINE_LIMIT = 50;
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30000;
const MEDIA_TRIES = 6;
const TYPING_TIMEOUT_MS = 20000;
const TYPING_RESEND_MS = 10000;
const TYPING_IDLE_MS = 5000;
const ENDED_TEXT = "Your access to this conversation has ended.";
const ENDED_ERRCODES = new Set(["M_UNKNOWN_TOKEN", "M_USER_DEACTIVATED", "M_MISSING_TOKEN"]);

const STYLE = `
:host {
  display: block;
  font: var(--c3-font, 15px/1.4 system-ui, sans-serif);
  color: var(--c3-fg, #1b1f24);
  background: var(--c3-bg, #ffffff);
  border: var(--c3-border, 1px solid #d0d7de);
  border-radius: var(--c3-radius, 8px);
  height: var(--c3-height, 480px);
  overflow: hidden;
}
.root { display: flex; flex-direction: column; height: 100%; }
.status { padding: 4px 12px; font-size: .85em; color: var(--c3-muted, #57606a); min-height: 1.4em; }
.status[data-state="offline"] { color: var(--c3-error, #b42318); }
.log { flex: 1; overflow-y: auto; padding: 8px 12px; display: flex; flex-direction: column; gap: 6px; }
.msg { flex-shrink: 0; max-width: 80%; align-self: flex-start; padding: 6px 10px; border-radius: var(--c3-radius, 8px);
  background: var(--c3-other-bg, #f0f2f5); color: var(--c3-other-fg, inherit); overflow-wrap: anywhere; }
.msg.own { align-self: flex-end; background: var(--c3-own-bg, #0b57d0); color: var(--c3-own-fg, #ffffff); }
.msg.notice { align-self: center; background: transparent; color: var(--c3-muted, #57606a); font-style: italic; }
.msg.pending { opacity: .6; }
.msg.failed { outline: 2px solid var(--c3-error, #b42318); }
.sender { display: block; font-size: .8em; font-weight: 600; }
.body { white-space: pre-wrap; }
.body img { max-width: 100%; max-height: 240px; display: block; border-radius: 4px; }
.msg.own a { color: inherit; }
.seen { flex-shrink: 0; align-self: flex-end; font-size: .75em; color: var(--c3-muted, #57606a); }
.typing { padding: 0 12px; font-size: .85em; color: var(--c3-muted, #57606a); min-height: 1.4em; }
.ended { margin: 8px 12px; padding: 8px 10px; border-radius: var(--c3-radius, 8px);
  background: var(--c3-ended-bg, #fff4e5); color: var(--c3-ended-fg, #7a2e0e); }
form { display: flex; gap: 6px; padding: 8px 12px; border-top: var(--c3-border, 1px solid #d0d7de); align-items: flex-end; }
textarea { flex: 1; resize: none; font: inherit; color: inherit; background: var(--c3-input-bg, transparent);
  border: var(--c3-border, 1px solid #d0d7de); border-radius: var(--c3-radius, 8px); padding: 6px 8px; min-height: 2.2em; }
button { font: inherit; border: 0; border-radius: var(--c3-radius, 8px); padding: 6px 12px; cursor: pointer;
  background: var(--c3-accent, #0b57d0); color: var(--c3-accent-fg, #ffffff); }
button.secondary { background: var(--c3-other-bg, #f0f2f5); color: var(--c3-fg, #1b1f24); }
button:disabled, textarea:disabled { opacity: .5; cursor: not-allowed; }
:is(button, textarea, a, .log):focus-visible { outline: 3px solid var(--c3-focus, #fb8c00); outline-offset: 2px; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
[hidden] { display: none !important; }
`;

const MARKUP = `
<div class="root" part="root">
  <div class="status" part="status" role="status" data-state="connecting">Connecting…</div>
  <div class="log" part="log" role="log" aria-live="polite" aria-label="Conversation" tabindex="0"></div>
  <div class="typing" part="typing" aria-live="polite"></div>
  <div class="ended" part="ended" role="alert" hidden></div>
  <form part="composer">
    <label class="visually-hidden" for="c3-input">Message</label>
    <textarea id="c3-input" rows="1" placeholder="Write a message…" disabled></textarea>
    <input type="file" class="visually-hidden" tabindex="-1" aria-hidden="true">
    <button type="button" class="secondary attach" aria-label="Attach a file" disabled>Attach</button>
    <button type="submit" class="send" disabled>Send</button>
  </form>
</div>
`;

function enc(value) {
  return encodeURIComponent(value);
}

function formatBytes(size) {
  if (!Number.isFinite(size)) return "";
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${Math.round(size / 1024)} KB`;
  return `${(size / 1024 / 1024).toFixed(1)} MB`;
}

/** A Matrix error answer: HTTP status plus the {errcode, error} body. */
class MatrixError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.errcode = (body && body.errcode) || "";
  }

  /** True when the credential no longer works: the conversation has ended for this user. */
  get endsAccess() {
    return this.status === 401 || ENDED_ERRCODES.has(this.errcode);
  }

  /** True for answers worth retrying (rate limits, proxies and homeservers restarting). */
  get temporary() {
    return this.status === 429 || this.status >= 500;
  }
}

/** Persistent per-(user, room) state in sessionStorage: never the access token. */
class SessionState {
  constructor(userId, roomId) {
    this.key = `c3-conversation:${userId}:${roomId}`;
    let saved = {};
    try {
      saved = JSON.parse(sessionStorage.getItem(this.key) || "{}") || {};
    } catch {
      saved = {};
    }
    this.prefix = saved.prefix || Math.random().toString(36).slice(2, 10);
    this.counter = saved.counter || 0;
    this.outbox = Array.isArray(saved.outbox) ? saved.outbox : [];
  }

  nextTxnId() {
    this.counter += 1;
    this.save();
    return `c3w.${this.prefix}.${this.counter}`;
  }

  save() {
    try {
      sessionStorage.setItem(
        this.key,
        JSON.stringify({ prefix: this.prefix, counter: this.counter, outbox: this.outbox }),
      );
    } catch {
      // Storage full or blocked: the conversation still works, a reload just starts afresh.
    }
  }
}

class C3Conversation extends HTMLElement {
  static get observedAttributes() {
    return ["credential"];
  }

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = `<style>${STYLE}</style>${MARKUP}`;
    this._log = root.querySelector(".log");
    this._status = root.querySelector(".status");
    this._typing = root.querySelector(".typing");
    this._ended = root.querySelector(".ended");
    this._form = root.querySelector("form");
    this._input = root.querySelector("textarea");
    this._file = root.querySelector("input[type=file]");
    this._attach = root.querySelector(".attach");
    this._send = root.querySelector(".send");
    this._credential = null;
    this._run = 0;
    this._wire();
  }

  /** The credential object: {access_token, user_id, device_id, homeserver_url, room_id, expires_at}. */
  get credential() {
    return this._credential ? { ...this._credential, access_token: undefined } : null;
  }

  set credential(value) {
    let credential = value;
    if (typeof value === "string") {
      try {
        credential = JSON.parse(value);
      } catch {
        credential = {}; // shown as a credential that lacks its fields
      }
    }
    this._start(credential || null);
  }

  /** "connecting" | "live" | "reconnecting" | "ended" */
  get state() {
    return this._state || "connecting";
  }

  attributeChangedCallback(name, _old, value) {
    if (name === "credential" && value) {
      this.credential = value;
      // The token must not stay readable in the page's DOM (outerHTML, serializers, extensions).
      this.removeAttribute("credential");
    }
  }

  connectedCallback() {
    performance.mark("c3-conversation:connected");
    // A page may set .credential before this module loaded: an own property then hides the
    // setter; take it over.
    if (Object.prototype.hasOwnProperty.call(this, "credential")) {
      const value = this.credential;
      delete this.credential;
      this.credential = value;
    }
    if (this._credential && !this._running) this._start(this._credential);
  }

  disconnectedCallback() {
    this._stop();
  }

  // ---- lifecycle ------------------------------------------------------------------------

  _start(credential) {
    this._stop();
    this._reset();
    this._credential = credential;
    if (!credential) return;
    for (const field of ["access_token", "user_id", "homeserver_url", "room_id"]) {
      if (!credential[field]) {
        this._end(`The credential has no ${field}.`, "C3_BAD_CREDENTIAL");
        return;
      }
    }
    this._base = String(credential.homeserver_url).replace(/\/+$/, "");
    this._roomId = credential.room_id;
    this._userId = credential.user_id;
    this._session = new SessionState(this._userId, this._roomId);
    this._running = true;
    const run = ++this._run;
    this._abort = new AbortController();
    this._scheduleExpiry(credential.expires_at, run);
    this._setStatus("connecting", "Connecting…");
    this._syncLoop(run);
  }

  _stop() {
    this._running = false;
    this._run += 1;
    if (this._abort) this._abort.abort();
    clearTimeout(this._expiryTimer);
    clearTimeout(this._typingIdle);
    clearTimeout(this._wakeTimer);
  }

  _reset() {
    this._since = null;
    this._events = new Map(); // event_id -> {index, element, sender}
    this._order = 0;
    this._members = new Map(); // user_id -> display name
    this._receipts = new Map(); // user_id -> event_id they have read
    this._pending = new Map(); // txn_id -> element
    this._typingUsers = [];
    this._lastOwnEvent = null;
    this._lastReadSent = null;
    this._typingSentAt = 0;
    this._ready = false;
    this._state = "connecting";
    this._log.replaceChildren();
    this._typing.textContent = "";
    this._ended.hidden = true;
    this._setComposerEnabled(false);
  }

  _scheduleExpiry(expiresAt, run) {
    const when = expiresAt ? Date.parse(expiresAt) : NaN;
    if (!Number.isFinite(when)) return;
    // At expiry, cut the parked long-poll short so the homeserver's refusal shows at once.
    const delay = Math.max(0, Math.min(when - Date.now() + 1000, 2 ** 31 - 1));
    this._expiryTimer = setTimeout(() => {
      if (run === this._run) this._wake();
    }, delay);
  }

  /** Abort the parked /sync so the loop asks again now (after expiry, or when back online). */
  _wake() {
    if (!this._running) return;
    this._abort.abort();
    this._abort = new AbortController();
  }

  // ---- HTTP -----------------------------------------------------------------------------

  async _request(method, path, { body, query, contentType, signal, raw } = {}) {
    let url = this._base + path;
    if (query) url += "?" + new URLSearchParams(query).toString();
    const headers = { Authorization: `Bearer ${this._credential.access_token}` };
    let payload = body;
    if (body !== undefined && !contentType) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    } else if (contentType) {
      headers["Content-Type"] = contentType;
    }
    const response = await fetch(url, { method, headers, body: payload, signal });
    if (!response.ok) {
      let error = null;
      try {
        error = await response.json();
      } catch {
        error = null;
      }
      throw new MatrixError(response.status, error);
    }
    return raw ? response : response.json();
  }

  _roomPath(tail) {
    return `/_matrix/client/v3/rooms/${enc(this._roomId)}/${tail}`;
  }

  /** Run ``work`` until it succeeds, backing off on network and temporary errors. */
  async _retrying(run, work) {
    let delay = BACKOFF_FIRST_MS;
    for (;;) {
      try {
        return await work();
      } catch (error) {
        if (run !== this._run) throw error;
        if (error instanceof MatrixError && !error.temporary) throw error;
        if (error instanceof MatrixError && error.status === 429) delay = Math.max(delay, 1000);
        await this._pause(delay, run);
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
    }
  }

  _pause(ms, run) {
    // Jitter spreads many widgets reconnecting after one outage; going online ends the wait.
    const wait = ms / 2 + Math.random() * (ms / 2);
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(this._wakeTimer);
        window.removeEventListener("online", done);
        resolve();
      };
      this._wakeTimer = setTimeout(done, wait);
      window.addEventListener("online", done);
      if (run !== this._run) done();
    });
  }

  // ---- sync -----------------------------------------------------------------------------

  _filter() {
    return JSON.stringify({
      presence: { not_types: ["*"] },
      account_data: { not_types: ["*"] },
      room: {
        rooms: [this._roomId],
        timeline: { limit: TIMELINE_LIMIT },
        state: { lazy_load_members: false },
        ephemeral: { types: ["m.typing", "m.receipt"] },
        account_data: { not_types: ["*"] },
      },
    });
  }

  async _syncLoop(run) {
    const filter = this._filter();
    let delay = BACKOFF_FIRST_MS;
    while (run === this._run) {
      const query = { filter, timeout: this._since ? String(SYNC_TIMEOUT_MS) : "0" };
      if (this._since) query.since = this._since;
      try {
        const answer = await this._request("GET", "/_matrix/client/v3/sync", {
          query,
          signal: this._abort.signal,
        });
        if (run !== this._run) return;
        this._since = answer.next_batch;
        this._applySync(answer);
        delay = BACKOFF_FIRST_MS;
        if (!this._ready) this._becomeReady();
        else this._setStatus("live", "");
        this._flushOutbox(run);
      } catch (error) {
        if (run !== this._run) return;
        if (error instanceof MatrixError && !error.temporary) {
          this._handleFatal(error);
          return;
        }
        if (error && error.name === "AbortError") continue; // woken on purpose: ask again now
        this._setStatus("reconnecting", this._lostText());
        await this._pause(delay, run);
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
    }
  }

  _becomeReady() {
    this._ready = true;
    this._setStatus("live", "");
    this._setComposerEnabled(true);
    for (const { txnId, content } of this._session.outbox) this._showPending(txnId, content);
    performance.mark("c3-conversation:ready");
    const start = performance.getEntriesByName("c3-conversation:connected")[0];
    const detail = { roomId: this._roomId, userId: this._userId, readyAt: performance.now() };
    if (start) detail.sinceConnectedMs = detail.readyAt - start.startTime;
    this._log.scrollTop = this._log.scrollHeight;
    this.dispatchEvent(new CustomEvent("c3-ready", { detail, bubbles: true, composed: true }));
  }

  _applySync(answer) {
    const rooms = answer.rooms || {};
    if ((rooms.leave && rooms.leave[this._roomId]) || (rooms.ban && rooms.ban[this._roomId])) {
      this._end(ENDED_TEXT, "C3_LEFT");
      return;
    }
    const room = rooms.join && rooms.join[this._roomId];
    if (!room) return;
    for (const event of (room.state && room.state.events) || []) this._applyState(event);
    for (const event of (room.timeline && room.timeline.events) || []) {
      if (event.state_key !== undefined) this._applyState(event);
      this._addEvent(event);
    }
    for (const event of (room.ephemeral && room.ephemeral.events) || []) {
      if (event.type === "m.typing") this._showTyping(event.content.user_ids || []);
      if (event.type === "m.receipt") this._applyReceipts(event.content || {});
    }
    this._renderSeen();
    this._sendReadReceipt();
  }

  _applyState(event) {
    if (event.type !== "m.room.member") return;
    const content = event.content || {};
    if (content.displayname) this._members.set(event.state_key, content.displayname);
    if (event.state_key === this._userId && ["leave", "ban"].includes(content.membership)) {
      this._end(ENDED_TEXT, "C3_LEFT");
    }
  }

  _name(userId) {
    if (userId === this._userId) return "You";
    return this._members.get(userId) || userId.replace(/^@/, "").split(":")[0];
  }

  // ---- timeline -------------------------------------------------------------------------

  _addEvent(event) {
    if (event.type !== "m.room.message" || this._events.has(event.event_id)) return;
    const content = event.content || {};
    if (!content.msgtype) return; // redacted
    const own = event.sender === this._userId;
    const txnId = event.unsigned && event.unsigned.transaction_id;
    const element = this._renderMessage(event.sender, content, own);
    element.dataset.eventId = event.event_id;
    const pending = (txnId && this._pending.get(txnId)) || this._pendingByEventId(event.event_id);
    if (pending) {
      pending.replaceWith(element);
      this._pending.delete(pending.dataset.txnId);
    } else {
      const stick = this._log.scrollHeight - this._log.scrollTop - this._log.clientHeight < 40;
      this._log.append(element);
      if (stick || own) this._log.scrollTop = this._log.scrollHeight;
    }
    this._events.set(event.event_id, { index: ++this._order, sender: event.sender });
    if (own) this._lastOwnEvent = event.event_id;
    if (this._ready) {
      const detail = { eventId: event.event_id, sender: event.sender, content };
      this.dispatchEvent(new CustomEvent("c3-message", { detail, bubbles: true, composed: true }));
    }
  }

  _pendingByEventId(eventId) {
    for (const element of this._pending.values()) {
      if (element.dataset.eventId === eventId) return element;
    }
    return null;
  }

  _renderMessage(sender, content, own) {
    const element = document.createElement("article");
    element.className = "msg" + (own ? " own" : "") + (content.msgtype === "m.notice" ? " notice" : "");
    const who = document.createElement("span");
    who.className = "sender";
    who.textContent = this._name(sender);
    const body = document.createElement("div");
    body.className = "body";
    if ((content.msgtype === "m.image" || content.msgtype === "m.file") && content.url) {
      this._renderMedia(body, content);
    } else {
      body.textContent = String(content.body || "");
    }
    element.append(who, body);
    return element;
  }

  _renderMedia(body, content) {
    const name = String(content.body || "file");
    const size = content.info && content.info.size;
    const link = document.createElement("a");
    link.href = "#";
    link.textContent = size ? `${name} (${formatBytes(size)})` : name;
    link.setAttribute("download", name);
    body.append(link);
    // Authenticated media: the browser cannot add our Authorization header to a plain
    // <img src>/<a href>, so the file is fetched once and shown from a blob: URL.
    const load = this._download(content.url).then((url) => {
      link.href = url;
      if (content.msgtype === "m.image") {
        const image = document.createElement("img");
        image.alt = name;
        image.src = url;
        link.replaceChildren(image);
        link.setAttribute("aria-label", `Image: ${name}`);
      }
      return url;
    });
    load.catch(() => {
      link.textContent = `${name} (could not be loaded)`;
      link.removeAttribute("href");
    });
  }

  async _download(mxc) {
    const match = /^mxc:\/\/([^/]+)\/([^/?#]+)$/.exec(String(mxc));
    if (!match) throw new Error("not an mxc URI");
    const path = `/_matrix/client/v1/media/download/${enc(match[1])}/${enc(match[2])}`;
    // A file just posted may be refused for a moment (C3 learns a context's media from the
    // homeserver's push, which can trail this client's /sync): a few tries, backing off.
    let delay = BACKOFF_FIRST_MS;
    for (let attempt = 1; ; attempt += 1) {
      try {
        const response = await this._request("GET", path, { raw: true });
        return URL.createObjectURL(await response.blob());
      } catch (error) {
        const again = !(error instanceof MatrixError && error.endsAccess) && attempt < MEDIA_TRIES;
        if (!again || !this._running) throw error;
        await new Promise((resolve) => setTimeout(resolve, delay));
        delay = Math.min(delay * 2, BACKOFF_MAX_MS);
      }
    }
  }

  // ---- sending --------------------------------------------------------------------------

  _queue(content) {
    const txnId = this._session.nextTxnId();
    this._session.outbox.push({ txnId, content });
    this._session.save();
    this._showPending(txnId, content);
    this._flushOutbox(this._run);
  }

  _showPending(txnId, content) {
    if (this._pending.has(txnId)) return;
    const element = this._renderMessage(this._userId, content, true);
    element.classList.add("pending");
    element.dataset.txnId = txnId;
    this._pending.set(txnId, element);
    this._log.append(element);
    this._log.scrollTop = this._log.scrollHeight;
  }

  /** Send queued messages in order, each under its own stable transaction id: a retry (or a
   *  reload) of the same message returns the same event instead of posting it twice. */
  async _flushOutbox(run) {
    if (this._flushing || !this._ready) return;
    this._flushing = true;
    try {
      while (run === this._run && this._session.outbox.length) {
        const { txnId, content } = this._session.outbox[0];
        this._showPending(txnId, content);
        let answer;
        try {
          answer = await this._retrying(run, () =>
            this._request("PUT", this._roomPath(`send/m.room.message/${enc(txnId)}`), { body: content }),
          );
        } catch (error) {
          if (run !== this._run || !(error instanceof MatrixError)) return;
          if (error.endsAccess || error.status === 403) {
            this._handleFatal(error);
            return;
          }
          this._markFailed(txnId, error); // only this message (too large, bad content…)
          continue;
        }
        this._session.outbox.shift();
        this._session.save();
        const element = this._pending.get(txnId);
        if (element && !this._events.has(answer.event_id)) element.dataset.eventId = answer.event_id;
        else if (element) {
          element.remove();
          this._pending.delete(txnId);
        }
      }
    } finally {
      this._flushing = false;
    }
  }

  _markFailed(txnId, error) {
    this._session.outbox = this._session.outbox.filter((item) => item.txnId !== txnId);
    this._session.save();
    const element = this._pending.get(txnId);
    if (element) {
      element.classList.replace("pending", "failed");
      element.title = `Not sent: ${error.message}`;
      this._pending.delete(txnId);
    }
  }

  _sendText() {
    const text = this._input.value;
    if (!text.trim() || !this._ready || this._state === "ended") return;
    this._input.value = "";
    this._queue({ msgtype: "m.text", body: text });
    this._sendTyping(false);
  }

  async _sendFile(file) {
    const run = this._run;
    const notice = this._renderMessage(this._userId, { msgtype: "m.text", body: `Uploading ${file.name}…` }, true);
    notice.classList.add("pending");
    this._log.append(notice);
    this._log.scrollTop = this._log.scrollHeight;
    try {
      const uploaded = await this._retrying(run, () =>
        this._request("POST", "/_matrix/media/v3/upload", {
          query: { filename: file.name },
          body: file,
          contentType: file.type || "application/octet-stream",
        }),
      );
      notice.remove();
      const image = (file.type || "").startsWith("image/");
      this._queue({
        msgtype: image ? "m.image" : "m.file",
        body: file.name,
        url: uploaded.content_uri,
        info: { mimetype: file.type || "application/octet-stream", size: file.size },
      });
    } catch (error) {
      notice.classList.replace("pending", "failed");
      notice.querySelector(".body").textContent = `${file.name} could not be sent: ${error.message}`;
      if (error instanceof MatrixError && error.endsAccess) this._handleFatal(error);
    }
  }

  // ---- typing and read state -------------------------------------------------------------

  _onInput() {
    clearTimeout(this._typingIdle);
    if (!this._input.value) {
      this._sendTyping(false);
      return;
    }
    if (Date.now() - this._typingSentAt > TYPING_RESEND_MS) this._sendTyping(true);
    this._typingIdle = setTimeout(() => this._sendTyping(false), TYPING_IDLE_MS);
  }

  _sendTyping(typing) {
    if (!this._ready || this._state === "ended") return;
    if (!typing && !this._typingSentAt) return;
    this._typingSentAt = typing ? Date.now() : 0;
    const body = typing ? { typing: true, timeout: TYPING_TIMEOUT_MS } : { typing: false };
    this._request("PUT", this._roomPath(`typing/${enc(this._userId)}`), { body }).catch(() => {});
  }

  _showTyping(userIds) {
    this._typingUsers = userIds.filter((id) => id !== this._userId);
    const names = this._typingUsers.map((id) => this._name(id));
    if (!names.length) this._typing.textContent = "";
    else if (names.length === 1) this._typing.textContent = `${names[0]} is typing…`;
    else this._typing.textContent = `${names.join(", ")} are typing…`;
  }

  _applyReceipts(content) {
    for (const [eventId, kinds] of Object.entries(content)) {
      for (const kind of ["m.read", "m.read.private"]) {
        for (const userId of Object.keys((kinds && kinds[kind]) || {})) {
          const known = this._events.get(this._receipts.get(userId));
          const incoming = this._events.get(eventId);
          if (!known || !incoming || incoming.index >= known.index) this._receipts.set(userId, eventId);
        }
      }
    }
  }

  _renderSeen() {
    const own = this._events.get(this._lastOwnEvent);
    let seenBy = [];
    if (own) {
      for (const [userId, eventId] of this._receipts) {
        const read = this._events.get(eventId);
        if (userId !== this._userId && read && read.index >= own.index) seenBy.push(this._name(userId));
      }
    }
    let marker = this._log.querySelector(".seen");
    if (!seenBy.length) {
      if (marker) marker.remove();
      return;
    }
    if (!marker) {
      marker = document.createElement("div");
      marker.className = "seen";
    }
    seenBy = [...new Set(seenBy)];
    marker.textContent = `Seen by ${seenBy.join(", ")}`;
    const ownElement = this._log.querySelector(`[data-event-id="${CSS.escape(this._lastOwnEvent)}"]`);
    if (ownElement) ownElement.after(marker);
  }

  _sendReadReceipt() {
    if (document.visibilityState === "hidden" || this._state === "ended") return;
    let latest = null;
    let index = -1;
    for (const [eventId, info] of this._events) {
      if (info.sender !== this._userId && info.index > index) {
        latest = eventId;
        index = info.index;
      }
    }
    if (!latest || latest === this._lastReadSent) return;
    this._lastReadSent = latest;
    this._request("POST", this._roomPath(`receipt/m.read/${enc(latest)}`), { body: {} }).catch(() => {
      this._lastReadSent = null;
    });
  }

  // ---- state shown to the user ---------------------------------------------------------

  _setStatus(state, text) {
    if (this._state === "ended") return;
    const changed = this._state !== state;
    this._state = state;
    this._status.dataset.state = state;
    this._status.textContent = text;
    if (changed) {
      const detail = { state };
      this.dispatchEvent(new CustomEvent("c3-connection", { detail, bubbles: true, composed: true }));
    }
  }

  _lostText() {
    return navigator.onLine ? "Connection lost — reconnecting…" : "Offline — waiting for the network…";
  }

  _setComposerEnabled(enabled) {
    for (const control of [this._input, this._send, this._attach]) control.disabled = !enabled;
  }

  _handleFatal(error) {
    if (error.endsAccess || error.status === 403 || error.status === 404) {
      this._end(ENDED_TEXT, error.errcode || `HTTP_${error.status}`);
    } else {
      this._setStatus("reconnecting", `Something went wrong: ${error.message}`);
    }
  }

  _end(message, reason) {
    if (this._state === "ended") return;
    this._stop();
    this._setStatus("ended", "");
    this._state = "ended";
    this._status.dataset.state = "ended";
    this._ended.textContent = message;
    this._ended.hidden = false;
    this._typing.textContent = "";
    this._setComposerEnabled(false);
    if (this._session) {
      this._session.outbox = [];
      this._session.save();
    }
    for (const element of this._pending.values()) element.classList.replace("pending", "failed");
    const detail = { reason };
    this.dispatchEvent(new CustomEvent("c3-access-ended", { detail, bubbles: true, composed: true }));
  }

  // ---- wiring ---------------------------------------------------------------------------

  _wire() {
    this._form.addEventListener("submit", (event) => {
      event.preventDefault();
      this._sendText();
    });
    this._input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this._sendText();
      }
    });
    this._input.addEventListener("input", () => this._onInput());
    this._attach.addEventListener("click", () => this._file.click());
    this._file.addEventListener("change", () => {
      for (const file of this._file.files) this._sendFile(file);
      this._file.value = "";
    });
    window.addEventListener("online", () => this._wake());
    window.addEventListener("offline", () => {
      if (!this._running) return;
      this._setStatus("reconnecting", this._lostText());
      this._wake();
    });
    document.addEventListener("visibilitychange", () => {
      if (this._ready) this._sendReadReceipt();
    });
  }
}

if (!customElements.get("c3-conversation")) customElements.define("c3-conversation", C3Conversation);

export { C3Conversation };
