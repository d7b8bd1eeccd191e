// The client on the close codes no pod can be made to send on cue: a pod never
// closes with 1008 today, and drains send one `reconnect` frame. A scripted
// WebSocket peer on loopback plays the pod, frame by frame (no pods needed).
import assert from 'node:assert/strict';
import test from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { Disconnected, State, WsnodeClient } from '../wsnode.js';

const frame = (type, payload = null) => JSON.stringify({ type, payload });

/** A peer that runs `script(ws, number)` on every connection after the welcome. */
async function scriptedPod(script) {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: () => 'bearer' });
  const taken = [];
  server.on('connection', (ws) => {
    taken.push(taken.length + 1);
    const number = taken.length;
    ws.send(frame('welcome', { connId: `c${number}`, podId: 'scripted', userId: 'u', heartbeatMs: 20000 }));
    ws.send(frame('restore', { replayed: 0 }));
    script(ws, number);
  });
  await new Promise((resolve) => server.once('listening', resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}/ws`,
    taken,
    close: () => new Promise((resolve) => {
      for (const ws of server.clients) ws.terminate();
      server.close(resolve);
    }),
  };
}

function within(ms, promise, what) {
  let timer;
  const limit = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`not within ${ms} ms: ${what}`)), ms); });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

test('a policy close stops the client for good', async () => {
  const pod = await scriptedPod((ws) => ws.close(1008, 'abuse'));
  const client = new WsnodeClient({ urls: pod.url, token: 't', WebSocket, logger: null });
  const states = [];
  const closed = new Promise((resolve) => client.on('state', (change) => {
    states.push(change);
    if (change.state === State.CLOSED) resolve(change);
  }));
  try {
    await client.connect();
    await within(10000, closed, 'the client closed');
    assert.equal(client.state, State.CLOSED);
    assert.deepEqual(pod.taken, [1]);
    assert.ok(!states.some((s) => s.state === State.RECONNECTING));
    const error = await client.send('x', null, { requireAck: false }).catch((err) => err);
    assert.ok(error instanceof Disconnected, String(error));
    assert.deepEqual([error.code, error.reason], [1008, 'closed 1008 abuse']);
  } finally {
    await client.close();
    await pod.close();
  }
});

test('a repeated reconnect frame is not a message', async () => {
  const pod = await scriptedPod((ws, number) => {
    if (number === 1) {
      ws.send(frame('reconnect', { reason: 'drain', retryAfterMs: 0 }));
      ws.send(frame('reconnect', { reason: 'drain', retryAfterMs: 0 }));
      ws.send(frame('note', 'after the drain notice'));
      ws.close(1012, 'pod draining: reconnect');
    } else {
      ws.send(frame('note', `on connection ${number}`));
    }
  });
  const client = new WsnodeClient({ urls: pod.url, token: 't', WebSocket, logger: null });
  const states = [];
  client.on('state', (change) => states.push(change));
  const got = [];
  const two = new Promise((resolve) => client.on('message', (msg) => {
    got.push(msg.payload);
    if (got.length === 2) resolve();
  }));
  try {
    await client.connect();
    await within(10000, two, 'two messages');
    assert.deepEqual(got, ['after the drain notice', 'on connection 2']);
    assert.deepEqual(pod.taken, [1, 2]);
    const away = states.filter((s) => s.state === State.RECONNECTING);
    assert.deepEqual(away.map((s) => [s.reason, s.code]), [['drain', 1012]]);
  } finally {
    await client.close();
    await pod.close();
  }
});
