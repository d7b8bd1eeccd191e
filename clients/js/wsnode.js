// wsnode.js: the wsnode client for browsers and Node.js (dependency-free ES module).
//
// It does what wsnode's delivery guarantees ask of a client so that apps do not
// have to: acks ACK-required messages once the app's handler returned, gives
// each one to the app once (dedup by id over a bounded window), stays connected
// (exponential backoff with full jitter; a pod's `reconnect` frame moves it to
// the next URL at once; only a close 1008, policy, stops it), takes the replay
// of pending messages on every connect, and sends messages that wait for the
// server's ack.
//
//   import { WsnodeClient } from './wsnode.js';
//   const client = new WsnodeClient({ urls: ['wss://pod-a/ws', 'wss://pod-b/ws'], token });
//   client.on('message', async (msg) => { ... });   // acked when this resolves
//   client.on('state', (change) => console.log(change.state, change.reason));
//   await client.connect();
//   await client.send('chat_message', { to: 'bob', text: 'hi' });  // waits for the ack
//   await client.subscribe('room:lobby');  // again after every reconnect, until unsubscribe()
//
// Node.js 20 has no global WebSocket: pass one (`WebSocket: (await import('ws')).WebSocket`).

export const State = Object.freeze({
  IDLE: 'idle', // made, not connected yet
  CONNECTING: 'connecting', // handshake and welcome in progress
  CONNECTED: 'connected', // welcome and the replay's `restore` frame seen
  RECONNECTING: 'reconnecting', // lost a connection; waiting `delayMs` before the next try
  CLOSED: 'closed', // closed by the app, or stopped by a final error
});

export const Verdict = Object.freeze({ NEW: 'new', REACK: 'reack', HOLD: 'hold' });

const CLOSE_ABNORMAL = 1006; // what a connection lost without a close frame reports
const CLOSE_POLICY = 1008;
const CLOSE_DRAIN = 1012;
const CLOSE_TOKEN_EXPIRED = 4401;
const DRAIN_CLOSE_GRACE_MS = 2000;
const MAX_AUTH_RETRIES = 2;
const OPEN = 1;

// -- errors ---------------------------------------------------------------------

/** Root of every error the client raises. */
export class WsnodeError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** No URL could be reached on the first connect (`cause` is the last failure). */
export class ConnectError extends WsnodeError {}

/** The handshake got an HTTP status instead of an upgrade. Browsers never tell
 * the status, so this is only seen where the WebSocket implementation reports
 * it (Node.js with `ws`); 401 and 403 are final. */
export class HandshakeRefused extends ConnectError {
  constructor(status, url) {
    super(`handshake refused by ${url} with HTTP ${status}`);
    this.status = status;
    this.url = url;
  }
}

/** An `error` frame: `code`, `message`, `id` of the offending message, `payload`. */
export class ServerError extends WsnodeError {
  constructor(code, message, id = null, payload = {}) {
    super(`${code}: ${message}${id ? ` (id ${JSON.stringify(id)})` : ''}`);
    this.code = code;
    this.serverMessage = message;
    this.id = id;
    this.payload = payload;
  }

  static fromFrame(frame) {
    const body = isObject(frame.payload) ? frame.payload : {};
    const code = String(body.code ?? 'internal');
    const message = String(body.message ?? '');
    const id = typeof frame.id === 'string' ? frame.id : null;
    const Kind = code === 'rate_limited' ? RateLimited : ServerError;
    return new Kind(code, message, id, body);
  }
}

/** `rate_limited`: wait `retryAfterMs` before sending again. */
export class RateLimited extends ServerError {
  get retryAfterMs() {
    const raw = this.payload.retryAfterMs;
    return typeof raw === 'number' && raw > 0 ? raw : 0;
  }
}

/** `send(..., {requireAck: true})` saw no ack in time. */
export class AckTimeout extends WsnodeError {
  constructor(id, timeoutMs) {
    super(`no ack for ${JSON.stringify(id)} within ${timeoutMs} ms`);
    this.id = id;
    this.timeoutMs = timeoutMs;
  }
}

/** `send(..., {requireAck: false})` found no connection in time. */
export class NotConnected extends WsnodeError {}

/** The client was closed before the call finished. */
export class ClientClosed extends WsnodeError {}

/** The server closed the connection for a reason no reconnect can fix (1008:
 * policy, such as abuse); the client stopped. `code` and `reason` are the close
 * frame's, `url` the connection's. */
export class Disconnected extends WsnodeError {
  constructor(code, reason, url = null) {
    super(`disconnected for good${url ? ` by ${url}` : ''}: ${reason}`);
    this.code = code;
    this.reason = reason;
    this.url = url;
  }
}

/** A 'message' handler threw: the message is not acked, the server resends it. */
export class HandlerError extends WsnodeError {
  constructor(delivery, cause) {
    super(`message handler failed for ${delivery.type} ${delivery.id ?? ''}: ${cause}`, { cause });
    this.delivery = delivery;
  }
}

// -- pure parts -------------------------------------------------------------------

/** The ids of the last `size` ACK-required messages given to the app. */
export class DedupWindow {
  constructor(size = 1024) {
    if (!(size >= 1)) throw new RangeError('the dedup window holds at least one id');
    this.size = size;
    this._ids = new Map(); // id -> handled (insertion order = age)
  }

  /** Classify a delivery of `id`; a NEW id is remembered as in progress. */
  check(id) {
    const handled = this._ids.get(id);
    if (handled === undefined) {
      this._ids.set(id, false);
      while (this._ids.size > this.size) this._ids.delete(this._ids.keys().next().value);
      return Verdict.NEW;
    }
    return handled ? Verdict.REACK : Verdict.HOLD;
  }

  handled(id) {
    if (this._ids.has(id)) this._ids.set(id, true);
  }

  forget(id) {
    this._ids.delete(id);
  }

  has(id) {
    return this._ids.has(id);
  }

  get length() {
    return this._ids.size;
  }
}

/** The topics a client wants on every connection, in the order first asked. A
 * pod forgets a connection's subscriptions when it ends, so the client subscribes
 * to each wanted topic again after every welcome. */
export class Subscriptions {
  constructor() {
    this._topics = new Set(); // insertion order is the order to re-send
  }

  /** Want `topic`; true when it was not wanted yet (a frame is due). Throws
   * TypeError unless it is a non-empty string (the rest is the server's rule). */
  add(topic) {
    if (typeof topic !== 'string' || topic === '') throw new TypeError('a topic is a non-empty string');
    if (this._topics.has(topic)) return false;
    this._topics.add(topic);
    return true;
  }

  /** Stop wanting `topic`; true when it was wanted. */
  remove(topic) {
    return this._topics.delete(topic);
  }

  has(topic) {
    return this._topics.has(topic);
  }

  /** Every wanted topic, oldest first: what a new connection subscribes to. */
  get topics() {
    return [...this._topics];
  }

  get length() {
    return this._topics.size;
  }
}

/** Exponential backoff with full jitter: uniform(0, min(maxMs, baseMs * 2^attempt)).
 * Throws RangeError unless 0 < baseMs <= maxMs. */
export function backoffDelay(attempt, { baseMs = 200, maxMs = 10000 } = {}, rng = Math.random) {
  if (!(baseMs > 0 && maxMs >= baseMs)) throw new RangeError('backoff needs 0 < baseMs <= maxMs');
  return rng() * Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 32));
}

/** A pod's `reconnect` frame payload: `reason` a non-empty string (else 'drain'),
 * `delayMs` from `retryAfterMs`, a number (else 0), never below 0. */
export function drainHint(payload) {
  const body = isObject(payload) ? payload : {};
  const retry = typeof body.retryAfterMs === 'number' && body.retryAfterMs > 0 ? body.retryAfterMs : 0;
  const reason = typeof body.reason === 'string' && body.reason ? body.reason : 'drain';
  return Object.freeze({ reason, delayMs: retry });
}

/**
 * How a connection closed with `code` (null: no close frame) and `reason` ends,
 * after the pod's `reconnect` frame `hint` (from drainHint) if one came.
 * `reason` and `code` are reported; a drain (`drainDelayMs` set) moves to the
 * next URL after that delay and starts the attempt count over; a `final` end
 * stops the client; any other end reconnects after a backoff delay.
 * 1008 (policy: origin, abuse) is final, as the 403 of a refused origin is at the
 * handshake: reconnecting cannot help and would only repeat the offence.
 */
export function connectionEnding(code, reason, hint = null) {
  const known = code === CLOSE_ABNORMAL || code == null ? null : code;
  const end = (why, more = {}) => Object.freeze({ reason: why, code: known, drainDelayMs: null, final: false, ...more });
  if (hint) return end(hint.reason, { drainDelayMs: hint.delayMs });
  if (known === CLOSE_DRAIN) return end('drain', { drainDelayMs: 0 });
  if (known === CLOSE_TOKEN_EXPIRED) return end('token expired');
  if (known === null) return end('connection lost');
  return end(`closed ${known}${reason ? ` ${reason}` : ''}`, { final: known === CLOSE_POLICY });
}

/** A message from the server, as given to 'message' handlers. */
export function messageFromFrame(frame) {
  const id = typeof frame.id === 'string' ? frame.id : null;
  return Object.freeze({
    type: String(frame.type),
    payload: frame.payload ?? null,
    id,
    seq: Number.isInteger(frame.seq) ? frame.seq : null,
    requiresAck: frame.requiresAck === true && id !== null,
    expiresAt: Number.isInteger(frame.expiresAt) ? frame.expiresAt : null,
  });
}

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function field(frame, name) {
  return isObject(frame.payload) ? frame.payload[name] : undefined;
}

function newId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID().replace(/-/g, '');
  let out = '';
  for (let i = 0; i < 32; i += 1) out += Math.floor(Math.random() * 16).toString(16);
  return out;
}

function finalStatus(status) {
  return status >= 400 && status < 500 && status !== 408 && status !== 429;
}

// -- topics -----------------------------------------------------------------------

const SUBSCRIBE = 'subscribe';
const UNSUBSCRIBE = 'unsubscribe';
const RETRY_CODES = new Set(['rate_limited', 'internal']);
const DEFAULT_RETRY_MS = 1000; // when an error frame gives no retryAfterMs

/**
 * A client's subscriptions across its connections. Each subscribe/unsubscribe
 * frame carries an id; the pod answers with a frame of the same type and id, or
 * an `error` naming the id: `rate_limited`/`internal` are written again after
 * `retryAfterMs` (1 s without one) while the wish holds; any other code
 * (`forbidden`, `bad_envelope`, `quota_exceeded`) refuses it, and a refused
 * topic is no longer wanted. The caller gets the error; a refused re-subscription after a
 * reconnect goes to 'error' listeners.
 */
class TopicLink {
  constructor({ connected, write, report }) {
    this.wanted = new Subscriptions();
    this._connected = connected;
    this._write = write;
    this._report = report;
    this._seq = 0;
    this._frames = new Map(); // id -> {op, topic}, this connection
    this._confirmed = new Set(); // acked on this connection
    this._waiters = new Map(); // `${op} ${topic}` -> Set of {resolve, reject}
    this._retries = new Set();
  }

  async subscribe(topic, waitMs) {
    const isNew = this.wanted.add(topic);
    if (!isNew && this._confirmed.has(topic)) return;
    const done = this._wait(SUBSCRIBE, topic, waitMs);
    if (isNew) this._send(SUBSCRIBE, topic);
    await done;
  }

  async unsubscribe(topic, waitMs) {
    this.wanted.remove(topic);
    this._confirmed.delete(topic);
    this._settle(SUBSCRIBE, topic, new WsnodeError(`unsubscribed from ${JSON.stringify(topic)} meanwhile`));
    if (!this._connected()) return;
    const done = this._wait(UNSUBSCRIBE, topic, waitMs);
    this._send(UNSUBSCRIBE, topic);
    await done;
  }

  onWelcome() {
    for (const topic of this.wanted.topics) this._send(SUBSCRIBE, topic);
  }

  onLost() {
    this._frames.clear();
    this._confirmed.clear();
    for (const timer of this._retries) clearTimeout(timer);
    this._retries.clear();
    for (const key of [...this._waiters.keys()]) {
      if (key.startsWith(`${UNSUBSCRIBE} `)) this._settleKey(key, null);
    }
  }

  /** The pod's answer (`error` null) or error frame naming `id`; false when not about a frame of ours. */
  onAnswer(id, error) {
    const entry = id ? this._frames.get(id) : undefined;
    if (!entry) return false;
    this._frames.delete(id);
    const { op, topic } = entry;
    const wanted = this.wanted.has(topic) === (op === SUBSCRIBE); // the wish still holds
    if (!error) {
      if (op === SUBSCRIBE && wanted) this._confirmed.add(topic);
      this._settle(op, topic, null);
    } else if (RETRY_CODES.has(error.code)) {
      if (wanted) {
        const delay = error instanceof RateLimited && error.retryAfterMs > 0 ? error.retryAfterMs : DEFAULT_RETRY_MS;
        const timer = setTimeout(() => {
          this._retries.delete(timer);
          if (this.wanted.has(topic) === (op === SUBSCRIBE)) this._send(op, topic);
        }, delay);
        this._retries.add(timer);
      }
    } else {
      if (op === SUBSCRIBE && wanted) this.wanted.remove(topic);
      if (!this._settle(op, topic, error)) this._report(error);
    }
    return true;
  }

  fail(error) {
    this.onLost();
    for (const key of [...this._waiters.keys()]) this._settleKey(key, error);
  }

  _send(op, topic) {
    if (!this._connected()) return; // subscribe: the next welcome sends it; unsubscribe: nothing to undo
    this._seq += 1;
    const id = `${op.slice(0, 5)}-${this._seq}`;
    this._frames.set(id, { op, topic });
    this._write({ type: op, id, payload: { topic } });
  }

  _wait(op, topic, waitMs) {
    const key = `${op} ${topic}`;
    return new Promise((resolve, reject) => {
      const waiter = {};
      const timer = setTimeout(() => {
        this._waiters.get(key)?.delete(waiter);
        reject(new AckTimeout(key, waitMs));
      }, waitMs);
      waiter.resolve = () => { clearTimeout(timer); resolve(); };
      waiter.reject = (err) => { clearTimeout(timer); reject(err); };
      if (!this._waiters.has(key)) this._waiters.set(key, new Set());
      this._waiters.get(key).add(waiter);
    });
  }

  _settle(op, topic, error) {
    return this._settleKey(`${op} ${topic}`, error);
  }

  _settleKey(key, error) {
    const waiters = this._waiters.get(key);
    this._waiters.delete(key);
    if (!waiters || waiters.size === 0) return false;
    for (const waiter of waiters) {
      if (error) waiter.reject(error);
      else waiter.resolve();
    }
    return true;
  }
}

// -- the client -------------------------------------------------------------------

/**
 * Events: 'message' (msg; may return a promise: acked when it resolves),
 * 'state' (change), 'error' (ServerError | HandlerError), 'duplicate' (msg, verdict),
 * 'ack' (id). Messages wait (unacked) until a 'message' handler is registered.
 */
export class WsnodeClient {
  constructor(options = {}) {
    const urls = typeof options.urls === 'string' ? [options.urls] : [...(options.urls ?? [])];
    if (urls.length === 0) throw new TypeError('give at least one URL in `urls`');
    if ((options.token == null) === (options.tokenProvider == null)) {
      throw new TypeError('give exactly one of `token` and `tokenProvider`');
    }
    const tokenVia = options.tokenVia ?? 'subprotocol';
    if (tokenVia !== 'subprotocol' && tokenVia !== 'query') {
      throw new TypeError("`tokenVia` must be 'subprotocol' or 'query'");
    }
    const Ws = options.WebSocket ?? globalThis.WebSocket;
    if (typeof Ws !== 'function') {
      throw new TypeError('no WebSocket here: pass the `WebSocket` option (Node.js < 22: the ws package)');
    }
    this._urls = urls;
    this._token = options.token ?? null;
    this._tokenProvider = options.tokenProvider ?? null;
    this._tokenVia = tokenVia;
    this._Ws = Ws;
    this._autoAck = options.autoAck ?? true;
    this._window = new DedupWindow(options.dedupWindow ?? 1024);
    this._maxBuffered = options.maxBuffered ?? 10000;
    this._backoff = { baseMs: 200, maxMs: 10000, ...(options.backoff ?? {}) };
    backoffDelay(0, this._backoff, () => 0); // a bad `backoff` option throws now, not at the first loss
    this._openTimeoutMs = options.openTimeoutMs ?? 10000;
    this._ackTimeoutMs = options.ackTimeoutMs ?? 5000;
    this._heartbeat = options.heartbeat ?? true;
    this._log = options.logger === undefined ? console : options.logger;

    /** @type {string} */
    this.state = State.IDLE;
    this.url = null;
    this.podId = null;
    this.connId = null;
    this.userId = null;
    this.replayed = 0;
    this.connections = 0;
    this.duplicates = 0;
    this.dropped = 0;

    this._listeners = new Map();
    this._inbox = [];
    this._pumping = false;
    this._ws = null; // set once welcomed: frames may be written
    this._socket = null; // the connection of the session, if any
    this._generation = 0;
    this._pending = new Map(); // id -> {frame, resolve, reject, generation}
    this._unsentAcks = new Set();
    this._restores = [];
    this._pings = new Map();
    this._pingSeq = 0;
    this._readyWaiters = new Set();
    this._supervisor = null;
    this._first = null;
    this._fatal = null;
    this._closing = false;
    this._wake = null; // ends a backoff sleep early (close)
    this._topicLink = new TopicLink({
      connected: () => this._isOpen(),
      write: (frame) => this._write(frame),
      report: (error) => this._emit('error', error),
    });
  }

  // -- events ----------------------------------------------------------------------

  /** Register a listener; returns a function that removes it. */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    if (event === 'message') queueMicrotask(() => this._pump());
    return () => this.off(event, listener);
  }

  off(event, listener) {
    this._listeners.get(event)?.delete(listener);
  }

  _emit(event, ...args) {
    for (const listener of [...(this._listeners.get(event) ?? [])]) {
      try {
        listener(...args);
      } catch (err) {
        this._log?.error?.(`wsnode: ${event} listener failed`, err);
      }
    }
  }

  _setState(state, details = {}) {
    this.state = state;
    this._emit('state', Object.freeze({ state, url: this.url, reason: '', attempt: 0, ...details }));
  }

  // -- lifecycle ---------------------------------------------------------------------

  /** Connect (trying each URL once); resolves once the first replay is in. */
  connect() {
    if (this._closing) return Promise.reject(this._fatal ?? new ClientClosed('client closed'));
    if (!this._first) {
      this._first = {};
      this._first.promise = new Promise((resolve, reject) => {
        this._first.resolve = resolve;
        this._first.reject = reject;
      });
      this._first.promise.catch(() => {});
      this._supervisor = this._supervise().catch((err) => {
        this._log?.error?.('wsnode: client supervisor failed', err);
        this._stop(new WsnodeError(`client stopped by an internal error: ${err}`));
      });
    }
    return this._first.promise;
  }

  /** Close the connection and stop; idempotent. Unacked messages are resent by
   * the server on the user's next connection. */
  async close() {
    this._shutdown(null);
    let timer;
    const cap = new Promise((resolve) => { timer = setTimeout(resolve, 2000); });
    await Promise.race([this._supervisor, cap]); // a peer that never answers the close
    clearTimeout(timer);
  }

  _shutdown(error) {
    if (this._closing) return;
    this._closing = true;
    const final = error ?? new ClientClosed('client closed');
    this._wake?.();
    const ws = this._socket;
    if (ws && ws.readyState <= OPEN) ws.close(1000, 'client closing');
    for (const pending of this._pending.values()) pending.reject(final);
    this._pending.clear();
    for (const waiter of [...this._restores, ...this._pings.values()]) waiter.reject(final);
    this._restores = [];
    this._pings.clear();
    for (const waiter of this._readyWaiters) waiter.reject(final);
    this._readyWaiters.clear();
    this._topicLink.fail(final);
    this._first?.reject(final);
    this._inbox = [];
    this._setState(State.CLOSED, { reason: error ? error.message : 'closed by the app' });
  }

  _stop(error) {
    this._fatal = error;
    this._shutdown(error);
  }

  // -- receiving ---------------------------------------------------------------------

  /** Ack a message (or an id) now; queued while disconnected. */
  ack(message) {
    const id = typeof message === 'string' ? message : message?.id;
    if (!id) return;
    this._window.handled(id);
    this._sendAck(id);
  }

  _onMessage(msg) {
    if (msg.id && this._window.has(msg.id)) {
      // A copy of a message already received: a resend or replay of an ACK-required
      // one, or an at-most-once one that reached this device on two connections.
      this.duplicates += 1;
      const verdict = msg.requiresAck ? this._window.check(msg.id) : Verdict.HOLD;
      if (verdict === Verdict.REACK) this._sendAck(msg.id);
      this._emit('duplicate', msg, verdict);
      return;
    }
    if (this._inbox.length >= this._maxBuffered) {
      this.dropped += 1;
      return;
    }
    if (msg.id) {
      this._window.check(msg.id);
      if (!msg.requiresAck) this._window.handled(msg.id); // nothing to ack: done once received
    }
    this._inbox.push(msg);
    this._pump();
  }

  // Handlers run one message at a time, in arrival order.
  async _pump() {
    if (this._pumping) return;
    this._pumping = true;
    try {
      while (this._inbox.length > 0 && (this._listeners.get('message')?.size ?? 0) > 0) {
        const msg = this._inbox.shift();
        let ok = true;
        for (const handler of [...this._listeners.get('message')]) {
          try {
            await handler(msg);
          } catch (err) {
            ok = false;
            if (msg.requiresAck) this._window.forget(msg.id); // the resend gets another try
            this._emit('error', new HandlerError(msg, err));
            break;
          }
        }
        if (ok && msg.requiresAck && this._autoAck && !this._closing) this.ack(msg.id);
      }
    } finally {
      this._pumping = false;
    }
  }

  // -- sending -----------------------------------------------------------------------

  /**
   * Send a message to the server; resolves to its id. With `requireAck` (default)
   * it waits for the server's ack, writing the frame again (same id) on every new
   * connection until then; rejects with ServerError or AckTimeout. Without, it
   * waits for a connection and writes once; rejects with NotConnected.
   */
  async send(type, payload = null, { requireAck = true, id = null, timeoutMs = null, expiresAt = null } = {}) {
    if (this._closing) throw this._fatal ?? new ClientClosed('client closed');
    if (!this._supervisor) throw new WsnodeError('not connected: call connect() first');
    const wait = timeoutMs ?? this._ackTimeoutMs;
    const frame = { type, payload };
    if (!requireAck) {
      if (id) frame.id = id;
      if (expiresAt != null) frame.expiresAt = expiresAt;
      const deadline = Date.now() + wait;
      const text = JSON.stringify(frame);
      for (;;) {
        try {
          await this._whenReady(Math.max(0, deadline - Date.now()));
        } catch (err) {
          if (err instanceof NotConnected) throw new NotConnected(`no connection within ${wait} ms: message not sent`);
          throw err;
        }
        if (this._write(text)) return id ?? '';
      }
    }
    const msgId = id ?? newId();
    if (this._pending.has(msgId)) throw new WsnodeError(`a send with id ${msgId} is already waiting for its ack`);
    frame.id = msgId;
    frame.requiresAck = true;
    if (expiresAt != null) frame.expiresAt = expiresAt;
    let timer;
    const acked = new Promise((resolve, reject) => {
      this._pending.set(msgId, { frame: JSON.stringify(frame), resolve, reject, generation: -1 });
      timer = setTimeout(() => reject(new AckTimeout(msgId, wait)), wait);
    });
    try {
      this._transmit(this._pending.get(msgId));
      await acked;
      return msgId;
    } finally {
      clearTimeout(timer);
      this._pending.delete(msgId);
    }
  }

  /** Ask the pod to replay this user's pending messages again; resolves to how many. */
  async restore({ since = null, timeoutMs = null } = {}) {
    const wait = timeoutMs ?? this._ackTimeoutMs;
    const started = Date.now();
    await this._whenReady(wait);
    return this._request(wait - (Date.now() - started), (waiter) => {
      this._restores.push(waiter);
      this._write({ type: 'restore', payload: since == null ? null : { since } });
    }, (waiter) => {
      this._restores = this._restores.filter((w) => w !== waiter);
    });
  }

  /** An application-level ping; resolves to the round trip in ms. */
  async ping({ timeoutMs = null } = {}) {
    const wait = timeoutMs ?? this._ackTimeoutMs;
    const started = Date.now();
    await this._whenReady(wait);
    const token = `p${(this._pingSeq += 1)}`;
    await this._request(wait - (Date.now() - started), (waiter) => {
      this._pings.set(token, waiter);
      this._write({ type: 'ping', payload: { ping: token } });
    }, () => this._pings.delete(token));
    return Date.now() - started;
  }

  // -- topics ------------------------------------------------------------------------

  /** The topics this client subscribes to on every connection, oldest first. */
  get topics() {
    return this._topicLink.wanted.topics;
  }

  /**
   * Subscribe to `topic` now and again on every new connection (a pod forgets a
   * connection's subscriptions when it ends); resolves once the pod confirmed it
   * (at once if it already had). Rejects with ServerError when the pod refuses
   * (`forbidden`: the app does not allow it; `bad_envelope`: a bad name;
   * `quota_exceeded`: as many topics as a pod allows), and the topic is then no
   * longer wanted; with AckTimeout after
   * `timeoutMs` (the topic stays wanted). A later refusal, when subscribing again
   * after a reconnect, goes to 'error' listeners and drops the topic.
   */
  async subscribe(topic, { timeoutMs = null } = {}) {
    this._checkOpen();
    await this._topicLink.subscribe(topic, timeoutMs ?? this._ackTimeoutMs);
  }

  /** Stop subscribing to `topic`; resolves once the current connection left it
   * (at once while disconnected). Rejects as subscribe() does. */
  async unsubscribe(topic, { timeoutMs = null } = {}) {
    this._checkOpen();
    await this._topicLink.unsubscribe(topic, timeoutMs ?? this._ackTimeoutMs);
  }

  _checkOpen() {
    if (this._closing) throw this._fatal ?? new ClientClosed('client closed');
    if (!this._supervisor) throw new WsnodeError('not connected: call connect() first');
  }

  _request(wait, start, cleanup) {
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      const timer = setTimeout(() => {
        cleanup(waiter);
        reject(new WsnodeError(`no answer within ${wait} ms`));
      }, Math.max(0, wait));
      waiter.resolve = (value) => {
        clearTimeout(timer);
        resolve(value);
      };
      waiter.reject = (err) => {
        clearTimeout(timer);
        reject(err);
      };
      start(waiter);
    });
  }

  _whenReady(wait) {
    if (this._closing) return Promise.reject(this._fatal ?? new ClientClosed('client closed'));
    if (this._ws && this._ws.readyState === OPEN && this._welcomed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject };
      const timer = setTimeout(() => {
        this._readyWaiters.delete(waiter);
        reject(new NotConnected(`no connection within ${wait} ms`));
      }, wait);
      waiter.resolve = () => {
        clearTimeout(timer);
        resolve();
      };
      waiter.reject = (err) => {
        clearTimeout(timer);
        reject(err);
      };
      this._readyWaiters.add(waiter);
    });
  }

  _isOpen() {
    return this._ws !== null && this._ws.readyState === OPEN && this._welcomed;
  }

  _write(frame) {
    if (!this._isOpen()) return false;
    this._ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
    return true;
  }

  _transmit(pending) {
    if (pending && this._isOpen() && pending.generation !== this._generation) {
      pending.generation = this._generation;
      this._write(pending.frame);
    }
  }

  _sendAck(id) {
    if (this._write({ type: 'ack', payload: { id } })) {
      this._emit('ack', id);
    } else {
      this._unsentAcks.add(id);
    }
  }

  // -- the supervisor ------------------------------------------------------------------

  async _supervise() {
    const urls = this._urls;
    let index = 0;
    let attempt = 0;
    let authFailures = 0;
    let firstFailures = 0;
    let delay = null;
    let why = {};
    while (!this._closing) {
      if (delay !== null) {
        this._setState(State.RECONNECTING, { delayMs: delay, attempt, ...why });
        if (delay > 0) await this._sleep(delay);
        if (this._closing) return;
      }
      this.url = urls[index % urls.length];
      this._setState(State.CONNECTING, { attempt });
      let failure;
      let ws = null;
      try {
        ws = await this._open(this.url);
      } catch (err) {
        failure = err;
        if (err instanceof HandshakeRefused) {
          const retryAuth = err.status === 401 && this._tokenProvider && authFailures < MAX_AUTH_RETRIES;
          if (finalStatus(err.status) && !retryAuth) {
            this._stop(err);
            return;
          }
          if (err.status === 401) authFailures += 1;
          why = { reason: `refused ${err.status}`, code: err.status };
        } else {
          why = { reason: `cannot connect: ${err.message}` };
        }
      }
      if (ws && this._closing) {
        ws.close(1000, 'client closing');
        return;
      }
      if (ws) {
        const ended = await this._session(ws);
        if (ended.connected) {
          attempt = 0;
          authFailures = 0;
        }
        why = { reason: ended.reason, code: ended.code };
        index += 1; // this pod is gone or going: try the next one
        if (this._closing) return;
        if (ended.final) {
          this._stop(new Disconnected(ended.code, ended.reason, this.url));
          return;
        }
        if (ended.drainDelayMs !== null) {
          attempt = 0;
          delay = ended.drainDelayMs;
          continue;
        }
        if (ended.connected) {
          delay = backoffDelay(attempt, this._backoff);
          attempt += 1;
          continue;
        }
        failure = new ConnectError(`${this.url}: ${ended.reason}`);
      }
      if (this._first && !this.connections) {
        firstFailures += 1;
        if (firstFailures >= urls.length) {
          this._stop(new ConnectError(`cannot connect to ${urls.join(', ')}: ${failure.message}`, { cause: failure }));
          return;
        }
      }
      index += 1;
      delay = backoffDelay(attempt, this._backoff);
      attempt += 1;
    }
  }

  _sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this._wake = done;
    }).finally(() => {
      this._wake = null;
    });
  }

  async _tokenNow() {
    return this._tokenProvider ? await this._tokenProvider() : this._token;
  }

  async _open(url) {
    const token = await this._tokenNow();
    let target = url;
    let protocols;
    if (this._tokenVia === 'query') {
      target += `${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
    } else {
      protocols = ['bearer', token];
    }
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new this._Ws(target, protocols);
      const timer = setTimeout(() => fail(new ConnectError(`${url}: no handshake within ${this._openTimeoutMs} ms`)), this._openTimeoutMs);
      const fail = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ws.onopen = ws.onclose = ws.onmessage = null;
        ws.onerror = () => {}; // Node's ws throws an 'error' event nobody listens to
        try {
          ws.close();
        } catch {
          // not open yet
        }
        reject(err);
      };
      ws.onopen = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        // Node's ws can emit frames (and the close) in the same task as 'open',
        // before the session's handlers are attached: keep them for it.
        const early = { events: [], closed: null };
        ws.onopen = null;
        ws.onerror = () => {};
        ws.onmessage = (event) => early.events.push(event);
        ws.onclose = (event) => { early.closed = event; };
        ws.wsnodeEarly = early;
        resolve(ws);
      };
      ws.onerror = (event) => {
        // Node's ws says "Unexpected server response: 401"; browsers say nothing.
        const text = String(event?.message ?? event?.error?.message ?? '');
        const status = /Unexpected server response: (\d{3})/.exec(text);
        fail(status ? new HandshakeRefused(Number(status[1]), url) : new ConnectError(`${url}: ${text || 'connection failed'}`));
      };
      ws.onclose = (event) => fail(new ConnectError(`${url}: closed ${event?.code ?? ''} before the handshake`));
    });
  }

  _session(ws) {
    this._generation += 1;
    this._socket = ws;
    this._welcomed = false;
    return new Promise((resolve) => {
      let connected = false;
      let initialRestore = true;
      let hint = null; // the pod's reconnect frame, if one came
      let grace = null;
      let lastSeen = Date.now();
      let heartbeat = null;
      const welcomeTimer = setTimeout(() => {
        try {
          ws.close(4000, 'no welcome frame in time');
        } catch {
          // already closing
        }
      }, this._openTimeoutMs);

      ws.onmessage = (event) => {
        if (this._closing) return;
        lastSeen = Date.now();
        let frame;
        try {
          const data = typeof event.data === 'string' ? event.data : new TextDecoder().decode(event.data);
          frame = JSON.parse(data);
        } catch {
          this._log?.warn?.('wsnode: ignored a frame that is not JSON');
          return;
        }
        if (!isObject(frame) || typeof frame.type !== 'string') return;
        if (!this._welcomed) {
          if (frame.type !== 'welcome') {
            ws.close(4000, 'expected a welcome frame');
            return;
          }
          clearTimeout(welcomeTimer);
          const info = isObject(frame.payload) ? frame.payload : {};
          this.podId = info.podId ?? null;
          this.connId = info.connId ?? null;
          this.userId = info.userId ?? null;
          this.connections += 1;
          this._ws = ws;
          this._welcomed = true;
          if (this._heartbeat) {
            const every = Number(info.heartbeatMs) > 0 ? Number(info.heartbeatMs) : 20000;
            heartbeat = setInterval(() => {
              const idle = Date.now() - lastSeen;
              if (idle > 2 * every) ws.close(4000, 'heartbeat timeout');
              else if (idle >= every) this._write({ type: 'ping', payload: null });
            }, Math.max(250, every / 2));
          }
          for (const waiter of this._readyWaiters) waiter.resolve();
          this._readyWaiters.clear();
          this._flush();
          return;
        }
        if (frame.type === 'restore' && initialRestore) {
          initialRestore = false;
          connected = true;
          this.replayed = Number.isInteger(field(frame, 'replayed')) ? field(frame, 'replayed') : 0;
          this._setState(State.CONNECTED, { podId: this.podId, connId: this.connId, replayed: this.replayed });
          this._first?.resolve();
        } else if (frame.type === 'reconnect') {
          if (!hint) {
            hint = drainHint(frame.payload);
            grace = setTimeout(() => ws.close(1000, 'draining'), DRAIN_CLOSE_GRACE_MS);
          }
        } else {
          this._onFrame(frame);
        }
      };
      ws.onerror = () => {}; // a close event follows
      const onClose = (event) => {
        clearTimeout(welcomeTimer);
        clearTimeout(grace);
        clearInterval(heartbeat);
        ws.onmessage = ws.onclose = null;
        ws.onerror = () => {};
        if (this._socket === ws) this._socket = null;
        if (this._ws === ws) {
          this._ws = null;
          this._topicLink.onLost();
        }
        this._welcomed = false;
        resolve({ ...connectionEnding(event?.code ?? null, event?.reason ?? '', hint), connected });
      };
      ws.onclose = onClose;
      const early = ws.wsnodeEarly ?? { events: [], closed: null };
      delete ws.wsnodeEarly;
      for (const event of early.events) ws.onmessage?.(event);
      if (early.closed) onClose(early.closed);
    });
  }

  _flush() {
    const unsent = [...this._unsentAcks];
    this._unsentAcks.clear();
    for (const id of unsent) this._sendAck(id);
    for (const pending of this._pending.values()) this._transmit(pending);
    this._topicLink.onWelcome();
  }

  _onFrame(frame) {
    switch (frame.type) {
      case 'ack': {
        const id = field(frame, 'id') ?? frame.id;
        this._pending.get(id)?.resolve();
        break;
      }
      case 'error': {
        const error = ServerError.fromFrame(frame);
        if (this._topicLink.onAnswer(error.id, error)) break;
        const pending = error.id ? this._pending.get(error.id) : undefined;
        if (pending) pending.reject(error);
        else this._emit('error', error);
        break;
      }
      case 'pong': {
        const token = field(frame, 'ping');
        if (token) this._pings.get(token)?.resolve();
        break;
      }
      case 'restore': {
        this._restores.shift()?.resolve(Number.isInteger(field(frame, 'replayed')) ? field(frame, 'replayed') : 0);
        break;
      }
      case 'subscribe':
      case 'unsubscribe': // the pod did it
        this._topicLink.onAnswer(typeof frame.id === 'string' ? frame.id : null, null);
        break;
      case 'welcome':
        break;
      default:
        this._onMessage(messageFromFrame(frame));
    }
  }
}
