// The pure parts of wsnode.js: no pod needed. The dedup window, the backoff and
// the close codes are in the scenarios both clients run (scenarios.test.mjs).
import assert from 'node:assert/strict';
import test from 'node:test';
import {
  HandshakeRefused, ConnectError, messageFromFrame, RateLimited, ServerError, WsnodeClient,
  WsnodeError,
} from '../wsnode.js';

test('messages and error frames', () => {
  const msg = messageFromFrame({ type: 'n', payload: { x: 1 }, id: 'm1', requiresAck: true, seq: 7, expiresAt: 9 });
  assert.deepEqual({ ...msg }, { type: 'n', payload: { x: 1 }, id: 'm1', seq: 7, requiresAck: true, expiresAt: 9 });
  assert.equal(Object.isFrozen(msg), true);
  assert.equal(messageFromFrame({ type: 'n', requiresAck: true }).requiresAck, false);
  const limited = ServerError.fromFrame({ type: 'error', id: 's1', payload: { code: 'rate_limited', message: 'slow', retryAfterMs: 1500 } });
  assert.ok(limited instanceof RateLimited && limited instanceof WsnodeError);
  assert.equal(limited.retryAfterMs, 1500);
  assert.equal(limited.id, 's1');
  const other = ServerError.fromFrame({ type: 'error', payload: { code: 'unknown_type', message: 'no' } });
  assert.equal(other.constructor, ServerError);
  assert.equal(other.code, 'unknown_type');
  assert.equal(other.serverMessage, 'no');
  assert.ok(new HandshakeRefused(401, 'ws://x') instanceof ConnectError);
});

test('options are checked', () => {
  const WebSocket = class {};
  assert.throws(() => new WsnodeClient({ urls: 'ws://x/ws', WebSocket }), /exactly one/);
  assert.throws(() => new WsnodeClient({ urls: [], token: 't', WebSocket }), /at least one URL/);
  assert.throws(() => new WsnodeClient({ urls: 'ws://x/ws', token: 't', tokenVia: 'header', WebSocket }), /tokenVia/);
  assert.throws(() => new WsnodeClient({ urls: 'ws://x/ws', token: 't', backoff: { baseMs: 0 }, WebSocket }), RangeError);
  if (typeof globalThis.WebSocket !== 'function') {
    assert.throws(() => new WsnodeClient({ urls: 'ws://x/ws', token: 't' }), /no WebSocket here/);
  }
});
