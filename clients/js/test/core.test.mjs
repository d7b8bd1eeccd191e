// The pure parts of wsnode.js: no pod needed.
import assert from 'node:assert/strict';
import test from 'node:test';
import {
  backoffDelay, DedupWindow, HandshakeRefused, ConnectError, messageFromFrame, RateLimited,
  ServerError, Verdict, WsnodeClient, WsnodeError,
} from '../wsnode.js';

test('the dedup window holds, then re-acks, and forgets the oldest', () => {
  const window = new DedupWindow(3);
  assert.equal(window.check('a'), Verdict.NEW);
  assert.equal(window.check('a'), Verdict.HOLD);
  window.handled('a');
  assert.equal(window.check('a'), Verdict.REACK);
  for (const id of ['b', 'c', 'd']) assert.equal(window.check(id), Verdict.NEW);
  assert.equal(window.length, 3);
  assert.equal(window.has('a'), false);
  assert.equal(window.check('a'), Verdict.NEW);
  window.forget('a');
  assert.equal(window.has('a'), false);
  assert.throws(() => new DedupWindow(0), RangeError);
});

test('backoff is full jitter under an exponential cap', () => {
  const top = [0, 1, 2, 3, 4, 5].map((n) => backoffDelay(n, { baseMs: 500, maxMs: 4000 }, () => 1));
  assert.deepEqual(top, [500, 1000, 2000, 4000, 4000, 4000]);
  assert.equal(backoffDelay(7, {}, () => 0), 0);
  assert.equal(backoffDelay(10000, {}, () => 1), 10000);
});

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
  if (typeof globalThis.WebSocket !== 'function') {
    assert.throws(() => new WsnodeClient({ urls: 'ws://x/ws', token: 't' }), /no WebSocket here/);
  }
});
