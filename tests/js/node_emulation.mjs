#!/usr/bin/env node
// The official npm `centrifuge` client over Centrifugo's bidirectional emulation (HTTP
// streaming, SSE + /emulation), for tests/test_emulation.py. Run with
// `node --experimental-eventsource` (Node 20's own EventSource, undici's) for SSE.
//
//   node --experimental-eventsource node_emulation.mjs --base http://127.0.0.1:PORT \
//        --transports http_stream[,sse][,websocket] --secret HMAC --user alice \
//        --channel chat:room [--ttl SECONDS] [--emulation URL] [--ws URL] [--claims JSON]
//
// The connection token is minted here (HS256 with --secret, exp = now + --ttl) and minted
// again whenever the SDK calls getToken (a refresh): {"event":"token","n":N} each time.
// It prints one JSON object per line for everything it sees (connected, disconnected,
// connecting, subscribing, subscribed, unsubscribed, publication, join, leave,
// server_subscribed, server_publication, ...) and reads commands as JSON lines on stdin:
//   {"cmd":"presence"} {"cmd":"history","limit":N} {"cmd":"publish","data":{...}}
//   {"cmd":"unsubscribe"} {"cmd":"subscribe"} {"cmd":"rpc","method":"m","data":{}}
//   {"cmd":"exit"}
// Errors of commands print {"event":"error","cmd":...,"message":...,"code":...}.

import { createInterface } from 'node:readline';
import { createHmac } from 'node:crypto';
import { Centrifuge } from 'centrifuge';

function parseArgs(argv) {
  const out = { ttl: '3600', debug: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--debug') out.debug = true;
    else if (a.startsWith('--')) out[a.slice(2)] = argv[++i];
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
for (const required of ['base', 'transports', 'secret', 'user', 'channel']) {
  if (!args[required]) {
    process.stderr.write(`missing --${required}\n`);
    process.exit(2);
  }
}

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, t: Date.now(), ...fields }) + '\n');
}

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

let tokens = 0;
function mintToken() {
  tokens += 1;
  const now = Math.floor(Date.now() / 1000);
  const claims = { sub: args.user, iat: now, exp: now + Number(args.ttl), n: tokens, ...JSON.parse(args.claims || '{}') };
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = b64url(createHmac('sha256', args.secret).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}

const endpoints = {
  websocket: args.ws || args.base.replace(/^http/, 'ws') + '/connection/websocket',
  http_stream: args.base + '/connection/http_stream',
  sse: args.base + '/connection/sse',
};
const transports = args.transports.split(',').map((t) => ({ transport: t, endpoint: endpoints[t] }));

const client = new Centrifuge(transports, {
  token: mintToken(),
  getToken: async () => {
    const t = mintToken();
    emit('token', { n: tokens });
    return t;
  },
  emulationEndpoint: args.emulation || args.base + '/emulation',
  debug: args.debug,
  minReconnectDelay: 100,
  maxReconnectDelay: 800,
  timeout: 5000,
});
client.on('connecting', (ctx) => emit('connecting', { code: ctx.code, reason: ctx.reason }));
client.on('connected', (ctx) => emit('connected', { client: ctx.client, transport: ctx.transport }));
client.on('disconnected', (ctx) => emit('disconnected', { code: ctx.code, reason: ctx.reason }));
client.on('error', (ctx) => emit('client_error', { type: ctx.type, message: ctx.error && ctx.error.message }));
client.on('subscribed', (ctx) => emit('server_subscribed', { channel: ctx.channel, recoverable: ctx.recoverable }));
client.on('publication', (ctx) => emit('server_publication', { channel: ctx.channel, data: ctx.data, offset: ctx.offset }));

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
sub.on('unsubscribed', (ctx) => emit('unsubscribed', { code: ctx.code, reason: ctx.reason }));
sub.on('publication', (ctx) =>
  emit('publication', { channel: ctx.channel, data: ctx.data, offset: ctx.offset, info: ctx.info }),
);
sub.on('join', (ctx) => emit('join', { channel: ctx.channel, info: ctx.info }));
sub.on('leave', (ctx) => emit('leave', { channel: ctx.channel, info: ctx.info }));
sub.on('error', (ctx) => emit('sub_error', { type: ctx.type, message: ctx.error && ctx.error.message }));
sub.subscribe();
client.connect();
emit('started', { transports: args.transports });

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
        emit('presence', { clients: (await sub.presence()).clients });
        break;
      case 'history': {
        const r = await sub.history({ limit: cmd.limit, reverse: !!cmd.reverse });
        emit('history', {
          publications: r.publications.map((p) => ({ data: p.data, offset: p.offset })),
          epoch: r.epoch,
          offset: r.offset,
        });
        break;
      }
      case 'publish':
        await sub.publish(cmd.data);
        emit('published', { data: cmd.data });
        break;
      case 'unsubscribe':
        sub.unsubscribe();
        emit('unsubscribe_called');
        break;
      case 'subscribe':
        sub.subscribe();
        emit('subscribe_called');
        break;
      case 'rpc':
        emit('rpc', { data: (await client.rpc(cmd.method, cmd.data || {})).data });
        break;
      case 'exit':
        client.disconnect();
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
  client.disconnect();
  setTimeout(() => process.exit(0), 50);
});
