// wsnode.js against real pods (started by tests/client/test_js_client.py):
// two pods of one cluster, ACK resends every 300 ms. Tests run one at a time;
// the drain test is last because it takes pod A away.
import assert from 'node:assert/strict';
import test from 'node:test';
import { AckTimeout, HandlerError, HandshakeRefused, ServerError, State } from '../wsnode.js';
import {
  admin, allAcked, eventually, makeClient, messageState, mintToken, noPods, pods, publish, sendAcked,
  sleep, subscribersOn,
} from './helpers.mjs';

const [a, b] = pods;

test('receives, acks after the handler resolved, and sees each message once', { skip: noPods }, async () => {
  const client = makeClient({ urls: [a.ws], token: mintToken('jo') });
  const states = [];
  const got = [];
  let release;
  const working = new Promise((resolve) => { release = resolve; });
  client.on('state', (change) => states.push(change));
  client.on('message', async (msg) => {
    got.push(msg);
    if (msg.id === 'slow-1') await working; // resends arrive meanwhile
  });
  await sendAcked(a, 'jo', 'early-1', { n: 1 }); // pending before the connect
  await client.connect();
  try {
    assert.equal(client.state, State.CONNECTED);
    assert.equal(client.podId, a.podId);
    assert.equal(client.userId, 'jo');
    assert.equal(client.replayed, 1);
    await allAcked(a, 'jo', ['early-1']);
    assert.deepEqual({ ...got[0] }, { type: 'm', payload: { n: 1 }, id: 'early-1', seq: 1, requiresAck: true, expiresAt: null });

    await sendAcked(a, 'jo', 'slow-1', 'x');
    await eventually(() => client.duplicates >= 2, 5000, 'two resends while the handler works');
    assert.equal(await messageState(a, 'jo', 'slow-1'), 'pending');
    release();
    await allAcked(a, 'jo', ['slow-1']);
    await sleep(700);
    assert.deepEqual(got.map((m) => m.id), ['early-1', 'slow-1']);
    assert.deepEqual(states.map((s) => s.state), ['connecting', 'connected']);
    assert.equal(states[1].replayed, 1);
  } finally {
    await client.close();
  }
  assert.equal(client.state, State.CLOSED);
});

test('an at-most-once message with an id reaches the handler once', { skip: noPods }, async () => {
  const client = makeClient({ urls: [a.ws], token: mintToken('amo') });
  const got = [];
  client.on('message', (msg) => { got.push(msg.id); });
  await client.connect();
  try {
    // The same id twice, as when a device moved pods while it was in flight to both.
    for (const n of [1, 2]) {
      await admin(a, 'POST', '/v1/send', { user: 'amo', envelope: { type: 'm', id: 'once-1', payload: n } });
    }
    await admin(a, 'POST', '/v1/send', { user: 'amo', envelope: { type: 'm', id: 'once-2' } });
    await eventually(() => got.length === 2 && client.duplicates === 1, 3000, 'two messages, one copy');
    assert.deepEqual(got, ['once-1', 'once-2']);
  } finally {
    await client.close();
  }
});

test('send waits for the ack; error frames are typed', { skip: noPods }, async () => {
  const client = makeClient({ urls: a.ws, tokenProvider: async () => mintToken('kim'), tokenVia: 'query' });
  const echoes = [];
  client.on('message', (msg) => { echoes.push(msg); });
  await client.connect();
  try {
    const id = await client.send('echo', { x: 1 });
    assert.match(id, /^[0-9a-f]{32}$/);
    await eventually(() => echoes.length === 1, 3000, 'the echo');
    assert.deepEqual(echoes[0].payload, { x: 1 });
    assert.equal(await client.send('echo', 'plain', { requireAck: false }), '');
    await eventually(() => echoes.length === 2, 3000, 'the second echo');

    await assert.rejects(client.send('nope', null, { id: 'bad-1' }),
      (err) => err instanceof ServerError && err.code === 'unknown_type' && err.id === 'bad-1');
    await assert.rejects(client.send('boom', {}), (err) => err instanceof ServerError && err.code === 'handler_error');
    await assert.rejects(client.send('slow', { seconds: 1 }, { id: 'late-1', timeoutMs: 300 }),
      (err) => err instanceof AckTimeout && err.id === 'late-1' && err.timeoutMs === 300);
    const rtt = await client.ping();
    assert.ok(rtt >= 0 && rtt < 1000);
    assert.equal(await client.restore(), 0);
  } finally {
    await client.close();
  }
  await assert.rejects(client.send('echo', 1), /client closed/);
});

test('a handler that throws gets the resend again, then it is acked', { skip: noPods }, async () => {
  const client = makeClient({ urls: [a.ws], token: mintToken('lu') });
  const errors = [];
  let calls = 0;
  client.on('error', (err) => errors.push(err));
  client.on('message', (msg) => {
    calls += 1;
    if (calls === 1) throw new Error(`not yet: ${msg.id}`);
  });
  await client.connect();
  try {
    await sendAcked(a, 'lu', 'flaky-1');
    await allAcked(a, 'lu', ['flaky-1']);
    assert.equal(calls, 2);
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof HandlerError && errors[0].delivery.id === 'flaky-1');
  } finally {
    await client.close();
  }
});

test('a bad token is refused at once', { skip: noPods }, async () => {
  const client = makeClient({ urls: [a.ws, b.ws], token: 'not-a-jwt' });
  const started = Date.now();
  await assert.rejects(client.connect(), (err) => err instanceof HandshakeRefused && err.status === 401);
  assert.ok(Date.now() - started < 2000);
  assert.equal(client.state, State.CLOSED);
});

test('close during connect leaves nothing behind', { skip: noPods }, async () => {
  for (const cut of [0, 2, 10, 30, 100]) {
    const client = makeClient({ urls: [a.ws], token: mintToken('gil') });
    const connecting = client.connect().catch((err) => err);
    await sleep(cut);
    await client.close();
    const outcome = await connecting;
    assert.ok(outcome === undefined || outcome.name === 'ClientClosed', String(outcome));
    assert.equal(client.state, State.CLOSED);
  }
  await eventually(async () => (await admin(a, 'GET', '/v1/presence/gil')).connections.length === 0,
    5000, 'no connection of gil left on the pod');
});

test('subscriptions come back after the pod closes the connection', { skip: noPods }, async () => {
  // The first token expires after 3 s: pod B closes the connection (4401) and the
  // client reconnects, to pod A, with a fresh token. The chat example lets a
  // connection subscribe to room:<name> topics.
  let tokens = 0;
  const client = makeClient({ urls: [b.ws, a.ws], tokenProvider: async () => mintToken('ivy', (tokens += 1) === 1 ? 3 : 3600) });
  const got = [];
  const errors = [];
  client.on('message', (msg) => { got.push(msg.payload); });
  client.on('error', (err) => errors.push(err));
  await client.connect();
  const reaches = async (mark) => {
    await publish(b, 'room:lobby', mark);
    await sleep(200);
    return got.includes(mark);
  };
  try {
    assert.equal(client.podId, b.podId);
    await client.subscribe('room:lobby');
    await client.subscribe('room:lobby'); // confirmed already: at once
    await assert.rejects(client.subscribe('secret.plans'), (err) => err instanceof ServerError && err.code === 'forbidden');
    await assert.rejects(client.subscribe(''), TypeError);
    assert.deepEqual(client.topics, ['room:lobby']);
    await eventually(() => reaches('before'), 5000, 'a publish before the close');

    await eventually(() => client.connections === 2 && client.state === State.CONNECTED, 15000, 'reconnected');
    assert.equal(client.podId, a.podId);
    await eventually(async () => (await subscribersOn(b, 'room:lobby', a.podId)) === 1, 10000, 'subscribed again on pod A');
    await publish(b, 'room:lobby', 'after');
    await eventually(() => got.includes('after'), 5000, 'the publish after the reconnect');

    await client.unsubscribe('room:lobby');
    assert.deepEqual(client.topics, []);
    await eventually(async () => (await subscribersOn(b, 'room:lobby', a.podId)) === 0, 10000, 'out of the topic');
    assert.deepEqual(errors, []);
  } finally {
    await client.close();
  }
});

test('follows a drain to the next pod without loss or duplicates', { skip: noPods }, async () => {
  const client = makeClient({ urls: [a.ws, b.ws], token: mintToken('max') });
  const seen = new Map();
  const states = [];
  client.on('state', (change) => states.push(change));
  client.on('message', (msg) => { seen.set(msg.id, (seen.get(msg.id) ?? 0) + 1); });
  await client.connect();
  const ids = Array.from({ length: 50 }, (_, i) => `dr-${i}`);
  try {
    assert.equal(client.podId, a.podId);
    for (const [i, id] of ids.entries()) {
      await sendAcked(b, 'max', id, i);
      if (i === 15) await admin(a, 'POST', '/v1/drain', { pod: a.podId, overSeconds: 0 });
      await sleep(20);
    }
    await eventually(() => ids.every((id) => seen.has(id)), 15000, 'every message');
    await allAcked(b, 'max', ids);
    assert.equal(client.podId, b.podId);
    assert.ok([...seen.values()].every((count) => count === 1), JSON.stringify([...seen]));
    const away = states.filter((s) => s.state === State.RECONNECTING);
    assert.deepEqual(away.map((s) => [s.reason, s.code]), [['drain', 1012]]);
    assert.ok(away[0].delayMs <= 250);
    assert.deepEqual(states.filter((s) => s.state === State.CONNECTED).map((s) => s.podId), [a.podId, b.podId]);
  } finally {
    await client.close();
  }
});
