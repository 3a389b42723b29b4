// Protocol-level tests of src/clarion/hub/static/clarion.js against a scripted fake server
// (the `ws` package's WebSocketServer). Run: `node --test tests/js/` (tests/test_node_client.py
// does). The real hub is exercised by test_node_client.py and test_browser.py; these cover
// edges that are hard to provoke there: batched frames, ping/pong, close codes, token
// refresh per reconnect, duplicate offsets, unrecoverable positions and SSE fallback.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import WebSocket, { WebSocketServer } from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
const { Clarion, ClarionError } = await import(
  pathToFileURL(path.resolve(here, '../../src/clarion/hub/static/clarion.js')).href
);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Everything a test opened is closed at the end, also when it failed halfway.
const opened = { hubs: [], clients: [] };
after(async () => {
  for (const c of opened.clients) c.disconnect();
  await Promise.all(opened.hubs.map((h) => h.close()));
});

async function until(pred, what, timeout = 3000) {
  const deadline = Date.now() + timeout;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** A fake hub: answers connect/subscribe/publish/presence/history; records everything. */
async function fakeHub(opts = {}) {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((r) => wss.once('listening', r));
  const hub = {
    closed: false,
    wss,
    url: `ws://127.0.0.1:${wss.address().port}/connection/websocket`,
    conns: [],
    frames: [], // raw frames received
    commands: [], // parsed commands
    epoch: 'E1',
    offset: 0,
    history: [], // {data, offset}
    pingSeconds: opts.ping ?? 25,
    connectExtra: opts.connectExtra || {},
    connectError: opts.connectError,
    close() {
      if (this.closed) return Promise.resolve();
      this.closed = true;
      for (const c of this.conns) c.terminate();
      return new Promise((r) => wss.close(r));
    },
    last() {
      return this.conns[this.conns.length - 1];
    },
    publish(data) {
      const pub = { data, offset: ++this.offset };
      this.history.push(pub);
      for (const c of this.conns) {
        if (c.readyState === WebSocket.OPEN && c.subscribed) {
          c.send(JSON.stringify({ push: { channel: 'chat:a', pub } }));
        }
      }
      return pub;
    },
  };
  opened.hubs.push(hub);
  wss.on('connection', (ws) => {
    hub.conns.push(ws);
    ws.on('message', (raw) => {
      const frame = raw.toString();
      hub.frames.push(frame);
      for (const line of frame.split('\n')) {
        if (!line) continue;
        const cmd = JSON.parse(line);
        hub.commands.push(cmd);
        if (!cmd.id) continue;
        const reply = (body) => ws.send(JSON.stringify({ id: cmd.id, ...body }));
        if (cmd.connect) {
          if (hub.connectError) reply({ error: hub.connectError });
          else reply({ connect: { client: `c${hub.conns.length}`, version: 'fake', ping: hub.pingSeconds, pong: true, ...hub.connectExtra } });
        } else if (cmd.subscribe) {
          ws.subscribed = true;
          const s = cmd.subscribe;
          const res = { recoverable: true, epoch: hub.epoch, offset: hub.offset };
          if (s.recover) {
            res.was_recovering = true;
            if (s.epoch === hub.epoch) {
              res.recovered = true;
              res.publications = hub.history.filter((p) => p.offset > s.offset);
            } else {
              res.recovered = false;
            }
          }
          reply({ subscribe: res });
        } else if (cmd.refresh) {
          hub.refreshed = (hub.refreshed || []).concat(cmd.refresh.token);
          reply({ refresh: { expires: true, ttl: 3600 } });
        } else if (cmd.publish) {
          reply({ publish: {} });
        } else if (cmd.presence) {
          reply({ presence: { presence: { c1: { user: 'u', client: 'c1' } } } });
        } else if (cmd.history) {
          reply({ history: { publications: hub.history.slice(-(cmd.history.limit || 100)), epoch: hub.epoch, offset: hub.offset } });
        }
      }
    });
  });
  return hub;
}

function recorder(client) {
  const events = [];
  for (const name of ['connecting', 'connected', 'disconnected', 'transport', 'error']) {
    client.on(name, (ctx) => events.push({ ...ctx, ev: name }));
  }
  return events;
}

function fastClient(url, opts = {}) {
  return track(new Clarion(url, {
    websocket: WebSocket,
    minReconnectDelay: 20,
    maxReconnectDelay: 100,
    timeout: 2000,
    ...opts,
  }));
}

function track(client) {
  opened.clients.push(client);
  return client;
}

test('connects, subscribes, receives batched publications and answers pings', async () => {
  const hub = await fakeHub({ ping: 1 });
  const client = fastClient(hub.url, { token: 'T1' });
  const events = recorder(client);
  const pubs = [];
  const sub = client.subscribe('chat:a', { onPublication: (ctx) => pubs.push(ctx) });
  client.connect();
  await until(() => sub.state === 'subscribed', 'subscribed');
  assert.equal(hub.commands[0].connect.token, 'T1');
  assert.equal(events.find((e) => e.ev === 'connected').transport, 'websocket');

  // Two pushes in one frame, newline-separated.
  const ws = hub.last();
  ws.send(
    JSON.stringify({ push: { channel: 'chat:a', pub: { data: { n: 1 }, offset: 1 } } }) + '\n' +
      JSON.stringify({ push: { channel: 'chat:a', pub: { data: { n: 2 }, offset: 2, info: { user: 'x', client: 'y' } } } }),
  );
  await until(() => pubs.length === 2, 'two publications');
  assert.deepEqual(pubs.map((p) => p.data.n), [1, 2]);
  assert.equal(pubs[1].info.user, 'x');

  // A duplicate (same offset) is dropped.
  ws.send(JSON.stringify({ push: { channel: 'chat:a', pub: { data: { n: 2 }, offset: 2 } } }));
  // Server ping -> pong.
  ws.send('{}');
  await until(() => hub.frames.includes('{}'), 'pong');
  assert.equal(pubs.length, 2);

  // Commands issued in the same tick share a frame.
  const before = hub.frames.length;
  await Promise.all([sub.publish({ a: 1 }), sub.presence(), sub.history({ limit: 1 })]);
  const batched = hub.frames.slice(before).find((f) => f.includes('"publish"'));
  assert.ok(batched.includes('"presence"') && batched.includes('"history"'), batched);

  client.disconnect();
  await hub.close();
});

test('reconnects with a fresh token and recovers from the last offset without duplicates', async () => {
  const hub = await fakeHub();
  let n = 0;
  const client = fastClient(hub.url, { getToken: async () => `ticket-${++n}` });
  const pubs = [];
  const subscribed = [];
  const unrecoverable = [];
  const sub = client.subscribe('chat:a', {
    onPublication: (ctx) => pubs.push(ctx.data.n),
    onSubscribed: (ctx) => subscribed.push(ctx),
    onUnrecoverable: (ctx) => unrecoverable.push(ctx),
  });
  client.connect();
  await until(() => sub.state === 'subscribed', 'subscribed');
  hub.publish({ n: 1 });
  hub.publish({ n: 2 });
  await until(() => pubs.length === 2, 'live pubs');

  hub.last().terminate(); // network drop, no close frame
  await until(() => sub.state === 'subscribing', 'subscribing after drop');
  hub.publish({ n: 3 });
  hub.publish({ n: 4 });
  await until(() => subscribed.length === 2, 'resubscribed');
  await until(() => pubs.length === 4, 'recovered pubs');
  assert.deepEqual(pubs, [1, 2, 3, 4]);

  const subs = hub.commands.filter((c) => c.subscribe).map((c) => c.subscribe);
  assert.equal(subs[0].recover, undefined);
  assert.deepEqual([subs[1].recover, subs[1].epoch, subs[1].offset], [true, 'E1', 2]);
  const tokens = hub.commands.filter((c) => c.connect).map((c) => c.connect.token);
  assert.deepEqual(tokens, ['ticket-1', 'ticket-2'], 'getToken on every (re)connect');
  assert.equal(subscribed[1].recovered, true);
  assert.equal(subscribed[1].wasRecovering, true);
  assert.equal(unrecoverable.length, 0);

  // New epoch: the position is gone -> onUnrecoverable.
  hub.epoch = 'E2';
  hub.last().terminate();
  await until(() => unrecoverable.length === 1, 'unrecoverable');
  assert.equal(unrecoverable[0].epoch, 'E2');
  client.disconnect();
  await hub.close();
});

for (const code of [3500, 3999, 4500, 4999]) {
  test(`close code ${code} stops reconnecting`, async () => {
    const hub = await fakeHub();
    const client = fastClient(hub.url, { token: 't' });
    const events = recorder(client);
    client.connect();
    await until(() => client.state === 'connected', 'connected');
    hub.last().close(code, 'go away');
    await until(() => client.state === 'disconnected', 'disconnected');
    await sleep(200);
    assert.equal(hub.conns.length, 1, 'no reconnect');
    const d = events.find((e) => e.ev === 'disconnected');
    assert.equal(d.code, code);
    assert.equal(d.reason, 'go away');
    await hub.close();
  });
}

for (const code of [3001, 3008, 4000, 1006]) {
  test(`close code ${code} reconnects`, async () => {
    const hub = await fakeHub();
    const client = fastClient(hub.url, { token: 't' });
    client.connect();
    await until(() => client.state === 'connected', 'connected');
    if (code === 1006) hub.last().terminate();
    else hub.last().close(code, 'bye');
    await until(() => hub.conns.length === 2 && client.state === 'connected', 'reconnected');
    client.disconnect();
    await hub.close();
  });
}

test('a disconnect advice in the close reason is honoured', async () => {
  const hub = await fakeHub();
  const client = fastClient(hub.url, { token: 't' });
  client.connect();
  await until(() => client.state === 'connected', 'connected');
  hub.last().close(3000, JSON.stringify({ reason: 'nope', reconnect: false }));
  await until(() => client.state === 'disconnected', 'disconnected');
  await hub.close();
});

test('a permanent connect error stops; a temporary one retries', async () => {
  const hub = await fakeHub();
  hub.connectError = { code: 101, message: 'unauthorized' };
  const client = fastClient(hub.url, { token: 't' });
  const events = recorder(client);
  client.connect();
  await until(() => client.state === 'disconnected', 'disconnected');
  assert.equal(events.find((e) => e.ev === 'disconnected').code, 101);

  hub.connectError = { code: 109, message: 'token expired' };
  let calls = 0;
  const client2 = fastClient(hub.url, {
    getToken: async () => {
      calls++;
      if (calls >= 3) hub.connectError = undefined;
      return `t${calls}`;
    },
  });
  client2.connect();
  await until(() => client2.state === 'connected', 'connected after token refresh');
  assert.equal(calls, 3);
  client2.disconnect();
  await hub.close();
});

test('getToken throwing UNAUTHORIZED stops; other failures are retried', async () => {
  const hub = await fakeHub();
  let calls = 0;
  const client = fastClient(hub.url, {
    getToken: async () => {
      calls++;
      if (calls < 3) throw new Error('network');
      throw new ClarionError(Clarion.errors.UNAUTHORIZED, 'no');
    },
  });
  client.connect();
  await until(() => client.state === 'disconnected', 'disconnected');
  assert.equal(calls, 3);
  assert.equal(hub.conns.length, 0);
  await hub.close();
});

test('missing server pings trigger a reconnect', async () => {
  const hub = await fakeHub({ ping: 0.05 });
  const client = fastClient(hub.url, { token: 't', maxServerPingDelay: 100 });
  client.connect();
  await until(() => hub.conns.length >= 2, 'reconnect after ping timeout', 3000);
  client.disconnect();
  await hub.close();
});

test('an expiring token is refreshed with getToken before it expires', async () => {
  const hub = await fakeHub({ connectExtra: { expires: true, ttl: 0.3 } });
  let n = 0;
  const client = fastClient(hub.url, { token: 'first', getToken: async () => `fresh-${++n}` });
  client.connect();
  await until(() => hub.refreshed && hub.refreshed.length === 1, 'refresh command', 2000);
  assert.deepEqual(hub.refreshed, ['fresh-1']);
  assert.equal(hub.conns.length, 1, 'no reconnect needed');
  client.disconnect();
  await hub.close();
});

test('publish before connect waits for the connection; disconnect rejects waiters', async () => {
  const hub = await fakeHub();
  const client = fastClient(hub.url, { token: 't' });
  await assert.rejects(client.publish('chat:a', {}), (e) => e.code === 'disconnected');
  client.connect();
  await client.publish('chat:a', { x: 1 }); // waits while connecting
  assert.ok(hub.commands.some((c) => c.publish && c.publish.channel === 'chat:a'));
  client.disconnect();
  await assert.rejects(client.publish('chat:a', {}), (e) => e.code === 'disconnected');
  await hub.close();
});

test('falls back to SSE when the WebSocket never connects, and SSE is read-only', async () => {
  const opened = [];
  class FakeEventSource {
    constructor(url) {
      this.url = url;
      this.listeners = {};
      opened.push(this);
      setTimeout(() => {
        this.onmessage &&
          this.onmessage({
            data: JSON.stringify({
              connect: { client: 'sse1', session: 'S1', subs: { 'chat:a': { recoverable: true, epoch: 'E', offset: 0 } } },
            }),
            lastEventId: '',
          });
      }, 5);
    }
    addEventListener(name, fn) {
      this.listeners[name] = fn;
    }
    close() {
      this.closed = true;
    }
  }
  const client = track(new Clarion('ws://127.0.0.1:9/connection/websocket', {
    websocket: WebSocket,
    eventsource: FakeEventSource,
    token: 'tok',
    minReconnectDelay: 10,
    maxReconnectDelay: 20,
    wsFailuresBeforeFallback: 2,
  }));
  const events = recorder(client);
  const pubs = [];
  const lost = [];
  const sub = client.subscribe('chat:a', {
    onPublication: (ctx) => pubs.push(ctx),
    onUnrecoverable: (ctx) => lost.push(ctx),
  });
  client.connect();
  await until(() => client.state === 'connected', 'connected over sse');
  assert.equal(client.transport, 'sse');
  assert.deepEqual(events.filter((e) => e.ev === 'transport').map((e) => e.name), ['websocket', 'sse']);
  const es = opened[0];
  const url = new URL(es.url);
  assert.equal(url.pathname, '/connection/sse');
  assert.equal(url.protocol, 'http:');
  assert.deepEqual(url.searchParams.getAll('channel'), ['chat:a']);
  assert.equal(url.searchParams.get('token'), 'tok');

  es.onmessage({ data: JSON.stringify({ channel: 'chat:a', pub: { data: 'x', offset: 1 } }), lastEventId: 'C1' });
  assert.equal(pubs.length, 1);
  es.onmessage({ data: JSON.stringify({ channel: 'chat:a', pub: { data: 'x', offset: 1 } }), lastEventId: 'C1' });
  assert.equal(pubs.length, 1, 'a replayed offset is not delivered twice');
  es.listeners.unrecoverable({ data: JSON.stringify({ channel: 'chat:a', epoch: 'E9', offset: 40 }), lastEventId: 'C0' });
  assert.deepEqual(lost.map((u) => [u.channel, u.epoch, u.offset]), [['chat:a', 'E9', 40]]);
  assert.deepEqual(sub.position, { epoch: 'E9', offset: 40 });
  es.onmessage({ data: JSON.stringify({ channel: 'chat:a', pub: { data: 'y', offset: 41 } }), lastEventId: 'C1' });
  assert.equal(pubs.length, 2);
  await assert.rejects(sub.publish('no'), (e) => e.code === Clarion.errors.TRANSPORT_READONLY);

  // A drop: the stream is reopened with session + cursor, not the token.
  es.onerror();
  await until(() => opened.length === 2, 'reopened');
  const url2 = new URL(opened[1].url);
  assert.equal(url2.searchParams.get('session'), 'S1');
  assert.equal(url2.searchParams.get('cursor'), 'C1');
  assert.equal(url2.searchParams.get('token'), null);
  client.disconnect();
});

test('URL forms', () => {
  const a = new Clarion('http://h:1', { websocket: WebSocket });
  assert.equal(a._wsUrl, 'ws://h:1/connection/websocket');
  assert.equal(a._sseUrl, 'http://h:1/connection/sse');
  const b = new Clarion('wss://h/connection/websocket', { websocket: WebSocket });
  assert.equal(b._wsUrl, 'wss://h/connection/websocket');
  assert.equal(b._sseUrl, 'https://h/connection/sse');
});

test('unsubscribe sends unsubscribe and stops delivery; subscribe() again resubscribes', async () => {
  const hub = await fakeHub();
  const client = fastClient(hub.url, { token: 't' });
  const pubs = [];
  const sub = client.subscribe('chat:a', { onPublication: (ctx) => pubs.push(ctx.data) });
  assert.throws(() => client.subscribe('chat:a'), /already subscribed/);
  client.connect();
  await until(() => sub.state === 'subscribed', 'subscribed');
  sub.unsubscribe();
  assert.equal(sub.state, 'unsubscribed');
  await until(() => hub.commands.some((c) => c.unsubscribe), 'unsubscribe command');
  assert.equal(client.getSubscription('chat:a'), null);
  hub.publish('ignored'); // the fake hub ignores unsubscribe: the client must drop it
  await sleep(50);
  assert.deepEqual(pubs, []);
  sub.subscribe();
  await until(() => sub.state === 'subscribed', 'subscribed again');
  hub.publish('wanted');
  await until(() => pubs.length === 1, 'publication after resubscribe');
  assert.deepEqual(pubs, ['wanted']);
  client.disconnect();
  await hub.close();
});

test('disconnect() then connect() recovers what was published in between', async () => {
  const hub = await fakeHub();
  const client = fastClient(hub.url, { token: 't' });
  const pubs = [];
  const subscribed = [];
  const sub = client.subscribe('chat:a', {
    onPublication: (ctx) => pubs.push(ctx.data),
    onSubscribed: (ctx) => subscribed.push(ctx),
  });
  client.connect();
  await until(() => sub.state === 'subscribed', 'subscribed');
  hub.publish('a');
  await until(() => pubs.length === 1, 'first publication');
  client.disconnect();
  assert.equal(client.state, 'disconnected');
  hub.publish('b');
  client.connect();
  await until(() => pubs.length === 2, 'recovered publication');
  assert.deepEqual(pubs, ['a', 'b']);
  assert.equal(subscribed[1].wasRecovering, true);
  assert.equal(subscribed[1].recovered, true);
  client.disconnect();
  await hub.close();
});
