// Compiled (never run) by `tsc -p test/tsconfig.json`: the .d.ts describes the API as used.
import {
  AckTimeout, connectionEnding, Disconnected, drainHint, HandlerError, HandshakeRefused, RateLimited,
  ServerError, State, Subscriptions, Verdict, WsnodeClient, type ConnectionEnding, type Message, type StateChange,
} from '../wsnode.js';

export async function example(token: string): Promise<number> {
  const client = new WsnodeClient({
    urls: ['ws://127.0.0.1:8765/ws', 'ws://127.0.0.1:8766/ws'],
    tokenProvider: async () => token,
    backoff: { baseMs: 100 },
  });
  const seen: Message[] = [];
  const off = client.on('message', async (msg) => {
    seen.push(msg);
  });
  client.on('state', (change: StateChange) => {
    if (change.state === State.CONNECTED) console.log(change.podId, change.replayed);
  });
  client.on('error', (err) => {
    if (err instanceof HandlerError) console.log(err.delivery.id);
    else if (err instanceof RateLimited) console.log(err.retryAfterMs);
    else console.log(err.code, err.serverMessage);
  });
  client.on('duplicate', (msg, verdict) => console.log(msg.id, verdict === Verdict.REACK));
  try {
    await client.connect();
  } catch (err) {
    if (err instanceof HandshakeRefused) return err.status;
    if (err instanceof Disconnected) console.log(err.code, err.reason, err.url);
    throw err;
  }
  const ending: ConnectionEnding = connectionEnding(1012, '', drainHint({ retryAfterMs: 10 }));
  if (ending.final || ending.drainDelayMs === null) console.log(ending.reason, ending.code);
  try {
    const id: string = await client.send('chat_message', { to: 'bob' }, { timeoutMs: 2000 });
    await client.send('typing', null, { requireAck: false });
    client.ack(id);
  } catch (err) {
    if (err instanceof AckTimeout) console.log(err.id, err.timeoutMs);
    if (err instanceof ServerError) console.log(err.code);
  }
  const replayed: number = await client.restore({ since: Date.now() - 60_000 });
  const rtt: number = await client.ping();
  await client.subscribe('room:lobby', { timeoutMs: 2000 });
  await client.unsubscribe('room:lobby');
  const topics: string[] = client.topics;
  const wanted = new Subscriptions();
  const fresh: boolean = wanted.add('news') && wanted.has('news') && !wanted.remove('other');
  console.log(topics.length + wanted.length, fresh, wanted.topics);
  off();
  await client.close();
  return replayed + rtt + seen.length + client.duplicates;
}
