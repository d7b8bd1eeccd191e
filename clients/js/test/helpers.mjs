// Test helpers: the pods pytest started for us (tests/client/test_js_client.py),
// tokens signed like `wsctl token`, the admin API, bounded waits.
import { createHmac } from 'node:crypto';
import { WebSocket } from 'ws';
import { WsnodeClient } from '../wsnode.js';

/** [{podId, ws, admin}] from WSNODE_TEST_PODS, or [] when run outside pytest. */
export const pods = JSON.parse(process.env.WSNODE_TEST_PODS ?? '[]');
export const noPods = pods.length === 0
  ? 'no pods: run through pytest tests/client/test_js_client.py (it starts them)'
  : false;

const secret = process.env.WSNODE_TEST_JWT_SECRET ?? '';
const apiKey = process.env.WSNODE_TEST_API_KEY ?? '';

const b64url = (value) => Buffer.from(value).toString('base64url');

/** An HS256 JWT for `user`, valid `ttlSeconds`. */
export function mintToken(user, ttlSeconds = 3600) {
  const now = Math.floor(Date.now() / 1000);
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify({ sub: user, iat: now, exp: now + ttlSeconds }));
  const signature = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

/** An admin API call that must succeed; its JSON answer. */
export async function admin(pod, method, path, body) {
  const response = await fetch(pod.admin + path, {
    method,
    headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(answer)}`);
  return answer;
}

export function sendAcked(pod, user, id, payload = null, type = 'm') {
  return admin(pod, 'POST', '/v1/send', { user, envelope: { type, id, requiresAck: true, payload } });
}

/** Publish an at-most-once message to `topic` through a pod's admin API. */
export function publish(pod, topic, payload, type = 'news') {
  return admin(pod, 'POST', '/v1/publish', { topic, envelope: { type, payload } });
}

/** Connections of pod `podId` the cluster counts in `topic`. */
export async function subscribersOn(pod, topic, podId) {
  const info = await admin(pod, 'GET', `/v1/topics/${encodeURIComponent(topic)}`);
  return info.pods.find((p) => p.pod === podId)?.connections ?? 0;
}

export async function messageState(pod, user, id) {
  return (await admin(pod, 'GET', `/v1/messages/${encodeURIComponent(user)}/${encodeURIComponent(id)}`)).state;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `probe` every 50 ms until it returns something truthy; fail after `ms`. */
export async function eventually(probe, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const got = await probe();
    if (got) return got;
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await sleep(50);
  }
}

export async function allAcked(pod, user, ids, ms = 10000) {
  await eventually(async () => {
    for (const id of ids) if ((await messageState(pod, user, id)) !== 'acked') return false;
    return true;
  }, ms, `${ids.length} messages of ${user} acked`);
}

/** A client over the ws package (Node.js 20 has no global WebSocket). */
export function makeClient(options) {
  return new WsnodeClient({ WebSocket, logger: null, ...options });
}
