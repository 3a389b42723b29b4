#!/usr/bin/env node
// A scripted realtime client for tests/test_node_client.py.
//
//   node node_client.mjs --lib centrifuge|clarion --url ws://127.0.0.1:PORT/connection/websocket \
//        --token JWT --channel chat:room [--debug]
//
// It connects, subscribes to the channel and prints one JSON object per line on stdout for
// everything it sees: {"event":"connected"|"connecting"|"disconnected"|"subscribing"|
// "subscribed"|"publication"|"join"|"leave"|"error"|"presence"|"history"|"published"|
// "dropped"|"online"|"result", ...}.
// It reads commands, one JSON object per line, on stdin:
//   {"cmd":"presence"}             -> {"event":"presence","clients":{...}}
//   {"cmd":"history","limit":N,"reverse":bool} -> {"event":"history","publications":[...],"epoch":..,"offset":..}
//   {"cmd":"publish","data":{...}} -> {"event":"published"}
//   {"cmd":"drop"}     simulate a network drop: kill the socket without a close handshake and
//                      make reconnect attempts fail until "online"   -> {"event":"dropped"}
//   {"cmd":"online"}   let reconnects through again                 -> {"event":"online"}
//   {"cmd":"exit"}
// Errors in commands print {"event":"error","cmd":...,"message":...}.
//
// --lib centrifuge uses the official npm client; --lib clarion uses the hub's own
// src/clarion/hub/static/clarion.js. Both get the same gated WebSocket class from `ws`.

import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';
import WebSocket from 'ws';

function parseArgs(argv) {
  const out = { lib: 'centrifuge', debug: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--debug') out.debug = true;
    else if (a.startsWith('--')) out[a.slice(2)] = argv[++i];
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
for (const required of ['url', 'token', 'channel']) {
  if (!args[required]) {
    process.stderr.write(`missing --${required}\n`);
    process.exit(2);
  }
}

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, t: Date.now(), ...fields }) + '\n');
}

// ---- a WebSocket class whose network can be "unplugged" --------------------------------
let offline = false;
const sockets = new Set();
// Port 9 (discard) on loopback: nothing listens there, so connecting fails fast.
const DEAD_URL = 'ws://127.0.0.1:9/connection/websocket';

class GatedWebSocket extends WebSocket {
  constructor(url, ...rest) {
    super(offline ? DEAD_URL : url, ...rest);
    sockets.add(this);
    this.addEventListener('close', () => sockets.delete(this));
  }
}

function dropNetwork() {
  offline = true;
  for (const s of [...sockets]) s.terminate(); // no close frame: like a cable pulled
}

// ---- adapters ---------------------------------------------------------------------------
async function makeCentrifuge() {
  const { Centrifuge } = await import('centrifuge');
  const client = new Centrifuge(args.url, {
    token: args.token,
    websocket: GatedWebSocket,
    debug: args.debug,
    minReconnectDelay: 100,
    maxReconnectDelay: 800,
  });
  client.on('connecting', (ctx) => emit('connecting', { code: ctx.code, reason: ctx.reason }));
  client.on('connected', (ctx) => emit('connected', { client: ctx.client, transport: ctx.transport }));
  client.on('disconnected', (ctx) => emit('disconnected', { code: ctx.code, reason: ctx.reason }));
  client.on('error', (ctx) => emit('client_error', { type: ctx.type, message: ctx.error && ctx.error.message }));
  const sub = client.newSubscription(args.channel, { joinLeave: true });
  sub.on('subscribing', (ctx) => emit('subscribing', { code: ctx.code, reason: ctx.reason }));
  sub.on('subscribed', (ctx) =>
    emit('subscribed', {
      channel: ctx.channel,
      recoverable: ctx.recoverable,
      recovered: ctx.recovered,
      wasRecovering: ctx.wasRecovering,
      epoch: ctx.streamPosition && ctx.streamPosition.epoch,
      offset: ctx.streamPosition && ctx.streamPosition.offset,
    }),
  );
  sub.on('publication', (ctx) =>
    emit('publication', { channel: ctx.channel, data: ctx.data, offset: ctx.offset, info: ctx.info }),
  );
  sub.on('join', (ctx) => emit('join', { channel: ctx.channel, info: ctx.info }));
  sub.on('leave', (ctx) => emit('leave', { channel: ctx.channel, info: ctx.info }));
  sub.on('error', (ctx) => emit('sub_error', { type: ctx.type, message: ctx.error && ctx.error.message }));
  sub.subscribe();
  client.connect();
  return {
    presence: async () => (await sub.presence()).clients,
    history: async (limit, reverse) => {
      const r = await sub.history({ limit, reverse: !!reverse });
      return { publications: r.publications.map((p) => ({ data: p.data, offset: p.offset })), epoch: r.epoch, offset: r.offset };
    },
    publish: (data) => sub.publish(data),
    close: () => client.disconnect(),
  };
}

async function makeClarion() {
  const here = path.dirname(fileURLToPath(import.meta.url));
  const file = path.resolve(here, '../../src/clarion/hub/static/clarion.js');
  const { Clarion } = await import(pathToFileURL(file).href);
  const client = new Clarion(args.url, {
    token: args.token,
    websocket: GatedWebSocket,
    debug: args.debug,
    minReconnectDelay: 100,
    maxReconnectDelay: 800,
  });
  client.on('connecting', (ctx) => emit('connecting', { code: ctx.code, reason: ctx.reason }));
  client.on('connected', (ctx) => emit('connected', { client: ctx.client, transport: ctx.transport }));
  client.on('disconnected', (ctx) => emit('disconnected', { code: ctx.code, reason: ctx.reason }));
  client.on('error', (ctx) => emit('client_error', { type: ctx.type, message: ctx.error && ctx.error.message }));
  const sub = client.subscribe(args.channel, {
    onSubscribing: (ctx) => emit('subscribing', { reason: ctx.reason }),
    onSubscribed: (ctx) =>
      emit('subscribed', {
        channel: ctx.channel,
        recoverable: ctx.recoverable,
        recovered: ctx.recovered,
        wasRecovering: ctx.wasRecovering,
        epoch: ctx.epoch,
        offset: ctx.offset,
      }),
    onPublication: (ctx) =>
      emit('publication', { channel: ctx.channel, data: ctx.data, offset: ctx.offset, info: ctx.info }),
    onJoin: (ctx) => emit('join', { channel: ctx.channel, info: ctx.info }),
    onLeave: (ctx) => emit('leave', { channel: ctx.channel, info: ctx.info }),
    onUnrecoverable: (ctx) => emit('unrecoverable', { channel: ctx.channel, epoch: ctx.epoch, offset: ctx.offset }),
    onError: (ctx) => emit('sub_error', { message: ctx.error && ctx.error.message, code: ctx.error && ctx.error.code }),
  });
  client.connect();
  return {
    presence: async () => (await sub.presence()).clients,
    history: async (limit, reverse) => {
      const r = await sub.history({ limit, reverse: !!reverse });
      return { publications: r.publications.map((p) => ({ data: p.data, offset: p.offset })), epoch: r.epoch, offset: r.offset };
    },
    publish: (data) => sub.publish(data),
    close: () => client.disconnect(),
  };
}

const adapters = { centrifuge: makeCentrifuge, clarion: makeClarion };
if (!adapters[args.lib]) {
  process.stderr.write(`unknown --lib ${args.lib}\n`);
  process.exit(2);
}
const api = await adapters[args.lib]();
emit('started', { lib: args.lib });

const rl = createInterface({ input: process.stdin });
rl.on('line', async (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    emit('error', { message: `bad command: ${line}` });
    return;
  }
  try {
    switch (cmd.cmd) {
      case 'presence':
        emit('presence', { clients: await api.presence() });
        break;
      case 'history':
        emit('history', await api.history(cmd.limit, cmd.reverse));
        break;
      case 'publish':
        await api.publish(cmd.data);
        emit('published', { data: cmd.data });
        break;
      case 'drop':
        dropNetwork();
        emit('dropped');
        break;
      case 'online':
        offline = false;
        emit('online');
        break;
      case 'exit':
        api.close();
        emit('exited');
        setTimeout(() => process.exit(0), 50);
        break;
      default:
        emit('error', { cmd: cmd.cmd, message: 'unknown command' });
    }
  } catch (e) {
    emit('error', { cmd: cmd.cmd, message: (e && e.message) || String(e), code: e && e.code });
  }
});
rl.on('close', () => {
  api.close();
  setTimeout(() => process.exit(0), 50);
});
