// Types of wsnode.js, the wsnode client for browsers and Node.js.

export type StateName = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

export declare const State: Readonly<{
  IDLE: 'idle';
  CONNECTING: 'connecting';
  CONNECTED: 'connected';
  RECONNECTING: 'reconnecting';
  CLOSED: 'closed';
}>;

export type VerdictName = 'new' | 'reack' | 'hold';

/** What to do with a delivery of an ACK-required message, by its id. */
export declare const Verdict: Readonly<{
  /** Give it to the app. */
  NEW: 'new';
  /** The app finished with it: ack again (the first ack may be lost), do not deliver. */
  REACK: 'reack';
  /** The app has it and has not finished: drop this copy. */
  HOLD: 'hold';
}>;

/** A message from the server. ACK-required messages carry `id` and the per-user `seq`. */
export interface Message {
  readonly type: string;
  readonly payload: unknown;
  readonly id: string | null;
  readonly seq: number | null;
  readonly requiresAck: boolean;
  /** Epoch milliseconds after which the server neither delivers nor retries it. */
  readonly expiresAt: number | null;
}

export interface StateChange {
  readonly state: StateName;
  /** The URL of the connection this change is about. */
  readonly url: string | null;
  /** Why the previous connection ended: 'drain', 'connection lost', 'token expired', 'closed 1001 ...'. */
  readonly reason: string;
  /** Close code (or HTTP status, where known) behind `reason`. */
  readonly code?: number | null;
  /** Consecutive failed attempts so far. */
  readonly attempt: number;
  /** 'reconnecting': wait before the next attempt. */
  readonly delayMs?: number;
  /** 'connected': from the pod's welcome. */
  readonly podId?: string | null;
  readonly connId?: string | null;
  /** 'connected': pending messages the pod replayed on connect. */
  readonly replayed?: number;
}

/** A WebSocket constructor: the browser's, Node 22's global one, or the ws package's. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** One URL (a load balancer) or pod URLs tried in turn; a drain moves to the next one. */
  urls: string | string[];
  /** A JWT. Give exactly one of `token` and `tokenProvider`. */
  token?: string;
  /** Called before every connection attempt: return a fresh token. */
  tokenProvider?: () => string | Promise<string>;
  /** How the token travels: `Sec-WebSocket-Protocol: bearer, <token>` (default) or `?token=`. */
  tokenVia?: 'subprotocol' | 'query';
  /** Default: `globalThis.WebSocket`. Node.js 20: `(await import('ws')).WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Ack ACK-required messages once every 'message' handler resolved (default true). */
  autoAck?: boolean;
  /** How many recent message ids are remembered for dedup (default 1024). */
  dedupWindow?: number;
  /** Messages waiting for handlers before new ones are dropped (the server resends ACK-required ones). */
  maxBuffered?: number;
  /** Exponential backoff with full jitter (defaults 200 ms, 10 s); 0 < baseMs <= maxMs. */
  backoff?: { baseMs?: number; maxMs?: number };
  /** Handshake plus welcome must take less (default 10 s). */
  openTimeoutMs?: number;
  /** Default timeout of send(), restore() and ping() (default 5 s). */
  ackTimeoutMs?: number;
  /** Application pings when the connection is idle; closes a dead one (default true). */
  heartbeat?: boolean;
  /** Where warnings go (default console; null for none). */
  logger?: Pick<Console, 'warn' | 'error'> | null;
}

export interface SendOptions {
  /** Wait for the server's ack (default true); the frame is rewritten on every new connection until then. */
  requireAck?: boolean;
  /** Default: a random id. */
  id?: string | null;
  timeoutMs?: number | null;
  expiresAt?: number | null;
}

export interface ClientEvents {
  /** May return a promise: the message is acked when every handler resolved. */
  message: (msg: Message) => void | Promise<void>;
  state: (change: StateChange) => void;
  /** Error frames no send() waits for, and handler failures. */
  error: (error: ServerError | HandlerError) => void;
  /** A resent copy that was not given to the app again. */
  duplicate: (msg: Message, verdict: VerdictName) => void;
  /** An ack frame was written for this id. */
  ack: (id: string) => void;
}

export declare class WsnodeClient {
  constructor(options: ClientOptions);
  readonly state: StateName;
  readonly url: string | null;
  readonly podId: string | null;
  readonly connId: string | null;
  readonly userId: string | null;
  /** Pending messages replayed on the last connect. */
  readonly replayed: number;
  /** Connections made so far (1 + reconnects). */
  readonly connections: number;
  /** Resent copies not given to the app again. */
  readonly duplicates: number;
  /** Messages dropped because `maxBuffered` were waiting. */
  readonly dropped: number;

  /** Register a listener; returns a function that removes it. */
  on<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): () => void;
  off<E extends keyof ClientEvents>(event: E, listener: ClientEvents[E]): void;
  /** Connect (each URL tried once); resolves when the first replay is in. Then reconnects by itself. */
  connect(): Promise<void>;
  /** Close and stop (idempotent). */
  close(): Promise<void>;
  /** Send a message; resolves to its id once acked (or written, without `requireAck`). */
  send(type: string, payload?: unknown, options?: SendOptions): Promise<string>;
  /** Ack a message now (with `autoAck: false`); queued while disconnected. */
  ack(message: Message | string): void;
  /** Ask for a replay of pending messages; resolves to how many were replayed. */
  restore(options?: { since?: number | null; timeoutMs?: number | null }): Promise<number>;
  /** Application ping; resolves to the round trip in ms. */
  ping(options?: { timeoutMs?: number | null }): Promise<number>;
  /** Topics subscribed to on every connection, oldest first. */
  readonly topics: string[];
  /**
   * Subscribe to a topic now and after every reconnect; resolves once the pod confirmed it.
   * Rejects with ServerError (`forbidden`, `bad_envelope`, `quota_exceeded`: then it is no longer wanted)
   * or AckTimeout (it stays wanted).
   */
  subscribe(topic: string, options?: { timeoutMs?: number | null }): Promise<void>;
  /** Stop subscribing; resolves once the current connection left it (at once while disconnected). */
  unsubscribe(topic: string, options?: { timeoutMs?: number | null }): Promise<void>;
}

/** The topics a client wants on every connection, oldest first. */
export declare class Subscriptions {
  constructor();
  readonly topics: string[];
  readonly length: number;
  /** True when newly wanted; throws TypeError unless a non-empty string. */
  add(topic: string): boolean;
  /** True when it was wanted. */
  remove(topic: string): boolean;
  has(topic: string): boolean;
}

export declare class DedupWindow {
  constructor(size?: number);
  readonly size: number;
  readonly length: number;
  check(id: string): VerdictName;
  handled(id: string): void;
  forget(id: string): void;
  has(id: string): boolean;
}

/** Exponential backoff with full jitter; throws RangeError unless 0 < baseMs <= maxMs. */
export declare function backoffDelay(
  attempt: number,
  options?: { baseMs?: number; maxMs?: number },
  rng?: () => number,
): number;

/** A pod's `reconnect` frame payload, read defensively. */
export interface DrainHint {
  readonly reason: string;
  readonly delayMs: number;
}
export declare function drainHint(payload: unknown): DrainHint;

/** What the end of a connection means: reported `reason` and `code`; a drain
 * (`drainDelayMs`) moves on after that delay; `final` stops the client (1008);
 * anything else reconnects after a backoff delay. */
export interface ConnectionEnding {
  readonly reason: string;
  readonly code: number | null;
  readonly drainDelayMs: number | null;
  readonly final: boolean;
}
export declare function connectionEnding(
  code: number | null,
  reason: string,
  hint?: DrainHint | null,
): ConnectionEnding;

export declare function messageFromFrame(frame: Record<string, unknown>): Message;

export declare class WsnodeError extends Error {}
export declare class ConnectError extends WsnodeError {}
/** Only where the WebSocket implementation reports the status (not in browsers). */
export declare class HandshakeRefused extends ConnectError {
  readonly status: number;
  readonly url: string;
}
export declare class ServerError extends WsnodeError {
  readonly code: string;
  readonly serverMessage: string;
  readonly id: string | null;
  readonly payload: Record<string, unknown>;
  static fromFrame(frame: Record<string, unknown>): ServerError;
}
export declare class RateLimited extends ServerError {
  readonly retryAfterMs: number;
}
export declare class AckTimeout extends WsnodeError {
  readonly id: string;
  readonly timeoutMs: number;
}
export declare class NotConnected extends WsnodeError {}
export declare class ClientClosed extends WsnodeError {}
/** Closed 1008 (policy): the client stopped, no reconnect can help. */
export declare class Disconnected extends WsnodeError {
  readonly code: number | null;
  readonly reason: string;
  readonly url: string | null;
}
export declare class HandlerError extends WsnodeError {
  readonly delivery: Message;
}
