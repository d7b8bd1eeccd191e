// The wsnode demo page: log in with a token, watch messages arrive and get acked,
// send messages, and see reconnects happen. State for tests: window.wsnodeDemo.
import { AckTimeout, HandlerError, ServerError, WsnodeClient } from '../wsnode.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const demo = {
  client: null,
  messages: [], // {id, seq, type, payload} in display order
  duplicates: [], // {id, verdict} of resent copies the client hid
  states: [], // every state change
  acked: [], // ids, in the order their ack frames were written
  errors: [],
};
window.wsnodeDemo = demo;
const rows = new Map(); // message id -> its <tr>

$('urls').value = params.get('urls') ?? `ws://${location.hostname || '127.0.0.1'}:8765/ws`;
$('token').value = params.get('token') ?? '';
const autoconnect = params.has('token');
if (params.has('token')) {
  // Keep the token out of the address bar (and out of a copied link).
  params.delete('token');
  history.replaceState(null, '', `${location.pathname}?${params}`);
}

function log(text) {
  const item = document.createElement('li');
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $('log').append(item);
  item.scrollIntoView({ block: 'nearest' });
}

function cell(text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function showStats() {
  const client = demo.client;
  $('stat-user').textContent = client?.userId ?? '-';
  $('stat-pod').textContent = client?.podId ?? '-';
  $('stat-connections').textContent = String(client?.connections ?? 0);
  $('stat-replayed').textContent = String(client?.replayed ?? 0);
  $('stat-shown').textContent = String(demo.messages.length);
  $('stat-duplicates').textContent = String(demo.duplicates.length);
}

function showMessage(msg) {
  demo.messages.push({ id: msg.id, seq: msg.seq, type: msg.type, payload: msg.payload });
  const tr = document.createElement('tr');
  if (msg.id) tr.dataset.id = msg.id;
  const ack = cell(msg.requiresAck ? 'pending' : '-', 'ack');
  ack.dataset.ack = msg.requiresAck ? 'pending' : 'none';
  tr.append(cell(String(demo.messages.length)), cell(msg.seq ?? ''), cell(msg.id ?? ''), cell(msg.type),
    cell(JSON.stringify(msg.payload), 'payload'), ack);
  $('messages').tBodies[0].append(tr);
  if (msg.id) rows.set(msg.id, tr);
  showStats();
}

function markAcked(id) {
  demo.acked.push(id);
  const ack = rows.get(id)?.querySelector('td.ack');
  if (ack) {
    ack.textContent = 'acked';
    ack.dataset.ack = 'acked';
  }
}

function setConnected(on) {
  $('connect').disabled = on;
  $('disconnect').disabled = !on;
  $('urls').disabled = on;
  $('token').disabled = on;
  $('send').querySelector('button').disabled = !on;
}

async function connect() {
  const urls = $('urls').value.split(',').map((u) => u.trim()).filter(Boolean);
  const token = $('token').value.trim();
  const client = new WsnodeClient({ urls, token, tokenVia: params.get('tokenVia') ?? 'subprotocol' });
  demo.client = client;
  client.on('message', showMessage); // returns: the client acks it
  client.on('ack', markAcked);
  client.on('duplicate', (msg, verdict) => {
    demo.duplicates.push({ id: msg.id, verdict });
    showStats();
  });
  client.on('error', (err) => {
    demo.errors.push(err.message);
    log(err instanceof HandlerError ? `handler failed: ${err.message}` : `server error: ${err.message}`);
  });
  client.on('state', (change) => {
    demo.states.push({ ...change });
    const badge = $('state');
    badge.textContent = change.state;
    badge.dataset.state = change.state;
    $('where').textContent = client.url ?? '';
    const details = [
      change.url,
      change.podId && `pod ${change.podId}`,
      change.replayed != null && `replayed ${change.replayed}`,
      change.reason && `(${change.reason})`,
      change.delayMs != null && `next try in ${Math.round(change.delayMs)} ms`,
    ].filter(Boolean);
    log(`${change.state} ${details.join(' ')}`);
    showStats();
    if (change.state === 'closed') setConnected(false);
  });
  setConnected(true);
  try {
    await client.connect();
  } catch (err) {
    log(`could not connect: ${err.message}`);
  }
}

$('login').addEventListener('submit', (event) => {
  event.preventDefault();
  connect();
});

$('disconnect').addEventListener('click', () => demo.client?.close());

$('send').addEventListener('submit', async (event) => {
  event.preventDefault();
  const out = $('send-result');
  out.className = '';
  let payload;
  try {
    payload = JSON.parse($('send-payload').value || 'null');
  } catch (err) {
    out.className = 'error';
    out.textContent = `payload is not JSON: ${err.message}`;
    return;
  }
  const requireAck = $('send-ack').checked;
  const started = performance.now();
  try {
    const id = await demo.client.send($('send-type').value, payload, { requireAck });
    const took = Math.round(performance.now() - started);
    out.textContent = requireAck ? `acked by the server: ${id} (${took} ms)` : 'sent (no ack asked)';
  } catch (err) {
    out.className = 'error';
    if (err instanceof ServerError) out.textContent = `refused: ${err.code}: ${err.serverMessage}`;
    else if (err instanceof AckTimeout) out.textContent = `no ack within ${err.timeoutMs} ms`;
    else out.textContent = String(err.message ?? err);
  }
});

showStats();
if (autoconnect) connect();
