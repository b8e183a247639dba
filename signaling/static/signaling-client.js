// The signaling server's JavaScript client: an ES module with no build step
// and no dependencies, for browsers (<script type="module">) and Node 22+
// (whose global WebSocket it uses; older Node passes one in the options).
//
//   import { SignalingClient } from "/client/signaling-client.js";
//   const client = new SignalingClient("ws://localhost:8080/signal");
//   client.on("message", (event) => console.log(event.from, event.payload));
//   await client.connect();
//   await client.join("lobby", { name: "alice" });
//   client.send("lobby", "hello");
//
// docs/clients.rst documents the API, the reconnection and resume rules.

/** The states a client goes through; `state` events carry them. */
export const States = Object.freeze({
  IDLE: "idle",
  CONNECTING: "connecting",
  OPEN: "open",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

/** Defaults of the reconnection backoff (milliseconds). */
export const BACKOFF_DEFAULTS = Object.freeze({
  base: 500,
  factor: 2,
  cap: 30000,
  maxTries: Infinity,
  jitter: 0.5,
});

/**
 * The delay before reconnection attempt `attempt` (0 for the first):
 * min(cap, base * factor ** attempt), less up to `jitter` of it at random,
 * so that many clients cut off at once do not come back at once.
 */
export function backoffDelay(attempt, options = BACKOFF_DEFAULTS, random = Math.random) {
  const { base, factor, cap, jitter } = { ...BACKOFF_DEFAULTS, ...options };
  const full = Math.min(cap, base * Math.pow(factor, attempt));
  return Math.round(full * (1 - jitter * random()));
}

/**
 * The delay after a server's `reconnect` message: its hint (`delayMs`),
 * plus up to `jitter` of it at random (never sooner than the server asked,
 * and not all its clients at once), at most `cap`.
 */
export function hintedDelay(hint, options = BACKOFF_DEFAULTS, random = Math.random) {
  const { cap, jitter } = { ...BACKOFF_DEFAULTS, ...options };
  return Math.round(Math.min(cap, hint * (1 + jitter * random())));
}

/** A tiny event emitter: `on` returns a function that unsubscribes. */
class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  on(type, listener) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    const listeners = this._listeners.get(type);
    if (listeners) listeners.delete(listener);
  }

  once(type) {
    return new Promise((resolve) => {
      const off = this.on(type, (event) => {
        off();
        resolve(event);
      });
    });
  }

  emit(type, event) {
    for (const listener of [...(this._listeners.get(type) || [])]) {
      try {
        listener(event);
      } catch (error) {
        // One listener's bug must not stop the others or the client.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

/**
 * A WebSocket that comes back: reconnection with exponential backoff and
 * jitter, and a `state`. Subclasses speak a protocol over it. `url` may be
 * a list (nodes of one cluster): the client moves on to the next one when
 * a server says it is going away or a connection cannot be opened.
 */
class ReconnectingSocket extends Emitter {
  constructor(url, options = {}) {
    super();
    this.urls = Array.isArray(url) ? [...url] : [url];
    if (this.urls.length === 0) throw new Error("no URL to connect to");
    this._urlIndex = 0;
    this._reconnectHint = null;
    this._socketOpened = false;
    this.options = options;
    this.backoff = { ...BACKOFF_DEFAULTS, ...(options.backoff || {}) };
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    if (!this._WebSocket) {
      throw new Error("no WebSocket: pass one as options.WebSocket (Node before 22)");
    }
    this._random = options.random || Math.random;
    this._setTimeout = options.setTimeout || globalThis.setTimeout.bind(globalThis);
    this._clearTimeout = options.clearTimeout || globalThis.clearTimeout.bind(globalThis);
    this.state = States.IDLE;
    this.attempt = 0;
    this._socket = null;
    this._timer = null;
    this._outbox = [];
  }

  /** The URL the client connects to next (or is connected to). */
  get url() {
    return this.urls[this._urlIndex];
  }

  _setState(state, detail = {}) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", { state, ...detail });
  }

  /** Open the socket; reconnects until `close()` or `maxTries`. */
  _open(url) {
    const socket = new this._WebSocket(url);
    this._socket = socket;
    this._reconnectHint = null;
    this._socketOpened = false;
    socket.onopen = () => {
      if (this._socket === socket) this._socketOpened = true;
    };
    socket.onmessage = (event) => {
      if (this._socket !== socket) return;
      let message;
      try {
        message = JSON.parse(typeof event.data === "string" ? event.data : String(event.data));
      } catch {
        return;
      }
      this._heard = true;
      this._received(message);
    };
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = null;
      this._socketClosed(event.code, event.reason || "");
    };
    socket.onerror = () => {
      // onclose follows and decides.
    };
  }

  _scheduleReconnect(code, reason) {
    if (this.attempt >= this.backoff.maxTries) {
      this._setState(States.CLOSED, { code, reason: "gave up reconnecting" });
      this._gaveUp();
      return;
    }
    const hint = this._reconnectHint;
    if (hint !== null || !this._socketOpened) {
      // Going away, or not there: another node may be.
      this._urlIndex = (this._urlIndex + 1) % this.urls.length;
    }
    const delay = hint !== null ? hintedDelay(hint, this.backoff, this._random) : backoffDelay(this.attempt, this.backoff, this._random);
    this.attempt += 1;
    this._setState(States.RECONNECTING, { code, reason, delay, attempt: this.attempt });
    this.emit("reconnecting", { code, reason, delay, attempt: this.attempt });
    this._timer = this._setTimeout(() => {
      this._timer = null;
      if (this.state === States.RECONNECTING) this._open(this._reconnectUrl());
    }, delay);
  }

  /**
   * The URL of the next connection: `url`, with `options.token` (a string
   * or a function returning one, called for every connection) as
   * `?token=` and `extra` parameters.
   */
  _connectUrl(extra = {}) {
    const token = typeof this.options.token === "function" ? this.options.token() : this.options.token;
    const params = Object.entries({ ...(token ? { token } : {}), ...extra });
    if (params.length === 0) return this.url;
    const query = params.map(([name, value]) => `${name}=${encodeURIComponent(value)}`).join("&");
    return `${this.url}${this.url.includes("?") ? "&" : "?"}${query}`;
  }

  /** Called once the client stopped reconnecting after maxTries. */
  _gaveUp() {}

  /** Send now if open, else once the session is back. */
  _send(message) {
    if (this.state === States.OPEN && this._socket && this._socket.readyState === 1) {
      this._socket.send(JSON.stringify(message));
    } else {
      this._outbox.push(message);
    }
  }

  _flush() {
    const outbox = this._outbox;
    this._outbox = [];
    for (const message of outbox) this._send(message);
  }

  _stop() {
    if (this._timer !== null) this._clearTimeout(this._timer);
    this._timer = null;
    const socket = this._socket;
    this._socket = null;
    if (socket && socket.readyState <= 1) socket.close(1000, "bye");
  }

  /** Drop the socket without a close frame reaching the server, if possible (tests). */
  _abandon() {
    const socket = this._socket;
    if (socket && typeof socket.terminate === "function") socket.terminate();
    else if (socket) socket.close(4001, "abandoned");
  }
}

/**
 * A client of the native protocol (`/signal`): rooms, peers, signaling,
 * reconnection with session resume.
 *
 * Events: `state` {state}, `welcome` {peerId, resumed}, `peer-joined`
 * {room, peer}, `peer-left` {room, peer}, `offer` / `answer` / `candidate`
 * / `message` {room, from, payload, seq}, `reconnect` {delayMs} (the
 * server is going away), `reconnecting` {delay, attempt},
 * `session-lost` {peerId, previousPeerId} (the rooms are then joined
 * again, each with a `rejoined` event carrying the `joined` reply),
 * `error` {code, message}.
 */
export class SignalingClient extends ReconnectingSocket {
  /**
   * @param {string|string[]} url ws(s)://host:port/signal, or several
   *   (nodes of one cluster, where a session resumes on any node)
   * @param {object} options token (a JWT, or a function returning a fresh
   *   one, sent as ?token= on every connection, for servers with --auth),
   *   WebSocket, backoff {base, factor, cap, maxTries, jitter}, heartbeat {interval, timeout} (ms, default 15000 and 5000;
   *   interval 0 turns it off), ackDelay (ms, default 100), requestTimeout
   *   (ms, default 10000), random, setTimeout, clearTimeout.
   */
  constructor(url, options = {}) {
    super(url, options);
    this.heartbeat = { interval: 15000, timeout: 5000, ...(options.heartbeat || {}) };
    this._heartbeatTimer = null;
    this.ackDelay = options.ackDelay ?? 100;
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.peerId = null;
    /** Map of room name to Map of peer id to metadata. */
    this.rooms = new Map();
    this._metadata = new Map();
    this._token = null;
    this._lastSeq = 0;
    this._ackedSeq = 0;
    this._ackTimer = null;
    this._nextId = 1;
    this._pending = new Map();
    this._connected = null;
  }

  /** Connect; resolves with the first `welcome`. */
  connect() {
    if (this.state !== States.IDLE && this.state !== States.CLOSED) {
      return this._connected ? this._connected.promise : Promise.resolve();
    }
    let resolve;
    let reject;
    const promise = new Promise((yes, no) => {
      resolve = yes;
      reject = no;
    });
    this._connected = { promise, resolve, reject };
    this.attempt = 0;
    this._setState(States.CONNECTING);
    this._open(this._connectUrl());
    return promise;
  }

  /** End the session: the others see this peer leave at once. */
  close() {
    this._sendAck();
    this._setState(States.CLOSED, { code: 1000, reason: "closed by the client" });
    this._stopHeartbeat();
    this._stop();
    this._failPending(new Error("the client was closed"));
  }

  join(room, metadata = {}) {
    return this._request({ type: "join", room, metadata }).then((reply) => {
      const peers = new Map(reply.peers.map((peer) => [peer.id, peer.metadata]));
      this.rooms.set(room, peers);
      this._metadata.set(room, metadata);
      return reply;
    });
  }

  leave(room) {
    this._metadata.delete(room);
    return this._request({ type: "leave", room }).then((reply) => {
      this.rooms.delete(room);
      return reply;
    });
  }

  /** The peers of `room` (id to metadata), as this client knows them. */
  peers(room) {
    return this.rooms.get(room) || new Map();
  }

  offer(room, to, description) {
    this._send({ type: "offer", room, to, payload: description });
  }

  answer(room, to, description) {
    this._send({ type: "answer", room, to, payload: description });
  }

  /** An ICE candidate to `to`, or to everyone in `room` without it. */
  candidate(room, candidate, to) {
    this._send(to ? { type: "candidate", room, to, payload: candidate } : { type: "candidate", room, payload: candidate });
  }

  /** Application data to `to`, or to everyone in `room` without it. */
  send(room, payload, to) {
    this._send(to ? { type: "message", room, to, payload } : { type: "message", room, payload });
  }

  ping() {
    return this._request({ type: "ping" });
  }

  // internals

  _reconnectUrl() {
    return this._connectUrl(this._token ? { resume: this._token, last: this._lastSeq } : {});
  }

  _request(message) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = this._setTimeout(() => {
        this._pending.delete(id);
        reject(new Error(`no answer to ${message.type} within ${this.requestTimeout} ms`));
      }, this.requestTimeout);
      this._pending.set(id, { resolve, reject, timer });
      this._send({ ...message, id });
    });
  }

  _gaveUp() {
    const error = new Error("gave up reconnecting");
    this._failPending(error);
    if (this._connected && this.peerId === null) this._connected.reject(error);
  }

  _failPending(error) {
    for (const [id, pending] of this._pending) {
      this._clearTimeout(pending.timer);
      pending.reject(error);
      this._pending.delete(id);
    }
  }

  _socketClosed(code, reason) {
    this._stopHeartbeat();
    if (this.state === States.CLOSED) return;
    if (code === 4000 && reason.startsWith("taken over")) {
      // Another socket resumed this session: it is that one's now.
      this._setState(States.CLOSED, { code, reason });
      this._failPending(new Error("the session was taken over"));
      return;
    }
    this._scheduleReconnect(code, reason);
  }

  _received(message) {
    if (message.type === "welcome") {
      this._welcome(message);
      return;
    }
    if (message.type === "reconnect") {
      // The server is going away: come back after its hint, elsewhere.
      this._reconnectHint = Number.isFinite(message.delayMs) ? Math.max(0, message.delayMs) : 0;
    }
    if (message.id !== undefined && this._pending.has(message.id)) {
      const pending = this._pending.get(message.id);
      this._pending.delete(message.id);
      this._clearTimeout(pending.timer);
      if (message.type === "error") {
        const error = new Error(message.message);
        error.code = message.code;
        pending.reject(error);
      } else {
        pending.resolve(message);
      }
      return;
    }
    if (typeof message.seq === "number") {
      // Never twice, whatever the server replays.
      if (message.seq <= this._lastSeq) return;
    }
    if (message.type === "peer-joined") {
      const peers = this.rooms.get(message.room);
      if (peers) peers.set(message.peer.id, message.peer.metadata);
    } else if (message.type === "peer-left") {
      const peers = this.rooms.get(message.room);
      if (peers) peers.delete(message.peer.id);
    }
    this.emit(message.type, message);
    if (typeof message.seq === "number") {
      this._lastSeq = message.seq;
      this._scheduleAck();
    }
  }

  _welcome(message) {
    const previous = this.peerId;
    const first = previous === null;
    this.peerId = message.peerId;
    this._token = message.resumeToken || null;
    this.attempt = 0;
    const lost = !first && !message.resumed;
    if (!message.resumed) {
      this._lastSeq = 0;
      this._ackedSeq = 0;
    }
    this._setState(States.OPEN, { resumed: Boolean(message.resumed) });
    this.emit("welcome", message);
    if (lost) {
      // The server no longer had the session (the grace passed): a new
      // peer id, so join the rooms again.
      const rooms = [...this._metadata];
      this.rooms.clear();
      this.emit("session-lost", { peerId: message.peerId, previousPeerId: previous });
      for (const [room, metadata] of rooms) {
        this.join(room, metadata).then(
          (reply) => this.emit("rejoined", reply),
          (error) => this.emit("error", { code: error.code, message: error.message, room }),
        );
      }
    }
    this._flush();
    this._startHeartbeat(this._socket);
    if (this._connected && first) this._connected.resolve(message);
  }

  /**
   * A page cannot see WebSocket pings, and a socket whose network went
   * away may stay "open" for minutes: every `interval` the client pings,
   * and a socket that then stays silent for `timeout` is given up. The
   * client resumes on a new socket at once, without closing the old one
   * (a close frame that reached the server would end the session); the
   * server closes the old one when the resume takes over.
   */
  _startHeartbeat(socket) {
    this._stopHeartbeat();
    const { interval, timeout } = this.heartbeat;
    if (!interval || !socket) return;
    const tick = () => {
      if (this._socket !== socket) return;
      this._heard = false;
      socket.send(JSON.stringify({ type: "ping" }));
      this._heartbeatTimer = this._setTimeout(() => {
        if (this._socket !== socket) return;
        if (this._heard) {
          this._heartbeatTimer = this._setTimeout(tick, Math.max(0, interval - timeout));
          return;
        }
        this._socket = null;
        this._heartbeatTimer = null;
        this._socketClosed(4100, "heartbeat timeout");
      }, timeout);
    };
    this._heartbeatTimer = this._setTimeout(tick, interval);
  }

  _stopHeartbeat() {
    if (this._heartbeatTimer !== null) this._clearTimeout(this._heartbeatTimer);
    this._heartbeatTimer = null;
  }

  _scheduleAck() {
    if (this._ackTimer !== null) return;
    this._ackTimer = this._setTimeout(() => {
      this._ackTimer = null;
      this._sendAck();
    }, this.ackDelay);
  }

  _sendAck() {
    if (this._lastSeq > this._ackedSeq && this.state === States.OPEN && this._socket && this._socket.readyState === 1) {
      this._ackedSeq = this._lastSeq;
      this._socket.send(JSON.stringify({ type: "ack", seq: this._lastSeq }));
    }
  }
}

/**
 * A client of the directory protocol (`/directory`, seed 004): register a
 * userId, discover users and their presence, relay to a userId. It
 * registers again after reconnecting.
 *
 * Events: `state`, `offer` / `answer` / `ice-candidate` {from, to, ...},
 * `presence` {userId, online}, `error` {code, message}, `reconnecting`.
 */
export class DirectoryClient extends ReconnectingSocket {
  constructor(url, options = {}) {
    super(url, options);
    this.userId = null;
    this._publicKey = null;
    this._watches = new Set();
    this._waiters = [];
  }

  /** Connect; resolves once open, retrying meanwhile; rejects if it gives up. */
  connect() {
    this.attempt = 0;
    const settled = new Promise((resolve, reject) => {
      const off = this.on("state", ({ state, reason }) => {
        if (state === States.OPEN) {
          off();
          resolve();
        } else if (state === States.CLOSED) {
          off();
          reject(new Error(`not connected: ${reason || state}`));
        }
      });
    });
    this._setState(States.CONNECTING);
    this._open(this._connectUrl());
    return settled;
  }

  close() {
    this._setState(States.CLOSED, { code: 1000 });
    this._stop();
  }

  /** Register `userId` with `publicKey`; resolves with `registered`. */
  register(userId, publicKey) {
    this.userId = userId;
    this._publicKey = publicKey;
    const reply = this._wait((m) => (m.type === "registered" && m.userId === userId) || m.type === "error");
    this._send({ type: "register", userId, publicKey });
    return reply.then((message) => {
      if (message.type === "error") throw Object.assign(new Error(message.message), { code: message.code });
      return message;
    });
  }

  /** Whether `userId` is online; `watch` subscribes to its `presence`. */
  discover(userId, { watch } = {}) {
    if (watch) this._watches.add(userId);
    if (watch === false) this._watches.delete(userId);
    const reply = this._wait((m) => m.type === "discover-response" && m.userId === userId);
    const message = { type: "discover", userId };
    if (watch !== undefined) message.watch = watch;
    this._send(message);
    return reply;
  }

  unregister() {
    this.userId = null;
    this._send({ type: "unregister" });
  }

  offer(to, offer) {
    this._send({ type: "offer", to, offer });
  }

  answer(to, answer) {
    this._send({ type: "answer", to, answer });
  }

  candidate(to, candidate) {
    this._send({ type: "ice-candidate", to, candidate });
  }

  // internals

  _reconnectUrl() {
    return this._connectUrl();
  }

  _wait(matches) {
    return new Promise((resolve) => this._waiters.push({ matches, resolve }));
  }

  _open(url) {
    super._open(url);
    const socket = this._socket;
    socket.onopen = () => {
      if (this._socket !== socket) return;
      this._socketOpened = true;
      this.attempt = 0;
      const back = this.state === States.RECONNECTING;
      this._setState(States.OPEN);
      if (back) {
        // The seed's client registered again after every reconnect.
        if (this.userId) this._socket.send(JSON.stringify({ type: "register", userId: this.userId, publicKey: this._publicKey }));
        for (const userId of this._watches) this._socket.send(JSON.stringify({ type: "discover", userId, watch: true }));
      }
      this._flush();
    };
  }

  _socketClosed(code, reason) {
    if (this.state === States.CLOSED) return;
    this._scheduleReconnect(code, reason);
  }

  _received(message) {
    const index = this._waiters.findIndex((waiter) => waiter.matches(message));
    if (index >= 0) {
      const [waiter] = this._waiters.splice(index, 1);
      waiter.resolve(message);
      return;
    }
    this.emit(message.type, message);
  }
}
