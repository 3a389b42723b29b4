/**
 * clarion.js — a small, dependency-free browser (and Node) client for the Clarion hub.
 *
 * Served by the hub at `/static/clarion.js`; use it as an ES module, no build step:
 *
 *   import { Clarion } from '/static/clarion.js';
 *   const client = new Clarion('ws://127.0.0.1:8000/connection/websocket', {
 *     getToken: async () => (await (await fetch('/my/ticket', {method: 'POST'})).json()).ticket,
 *   });
 *   const sub = client.subscribe('chat:lobby', {
 *     onPublication: (ctx) => console.log(ctx.data, ctx.info && ctx.info.user),
 *     onJoin: (ctx) => {}, onLeave: (ctx) => {},
 *     onSubscribed: (ctx) => {},      // {channel, recovered, wasRecovering, epoch, offset}
 *     onUnrecoverable: (ctx) => {},   // missed publications could not be recovered
 *   });
 *   client.on('connected', (ctx) => {});   // also 'connecting', 'disconnected', 'transport', 'error'
 *   client.connect();
 *   await sub.publish({text: 'hi'});       // WebSocket only
 *   const {clients} = await sub.presence();
 *   const {publications} = await sub.history({limit: 10});
 *
 * Transports
 *   - `websocket`: Centrifugo's JSON client protocol v2 at `/connection/websocket`
 *     (newline-batched frames, `{}` ping/pong, recovery with `recover/epoch/offset`).
 *   - `sse`: Server-Sent Events at `/connection/sse?channel=…&token=…` — receive only.
 *     Used when WebSocket is unavailable, or when it never connected and failed
 *     `wsFailuresBeforeFallback` times in a row. On a drop the stream is reopened with
 *     `session=` (from its connect event) and `cursor=` (last event id), so missed
 *     publications are replayed by the hub.
 *   PUBLISH, PRESENCE AND HISTORY REQUIRE THE WEBSOCKET TRANSPORT: over SSE they reject
 *   with a ClarionError whose code is `Clarion.errors.TRANSPORT_READONLY`.
 *
 * Tokens
 *   `token` is used for the first connection; `getToken()` (if given) is called for every
 *   later (re)connection — and for the first one when no `token` is given — so single-use
 *   tickets work. When the connect reply says the token expires (`expires`, `ttl`),
 *   `getToken()` is also called shortly before that and the token sent in a `refresh`. A `getToken` that throws `new ClarionError(Clarion.errors.UNAUTHORIZED, …)`
 *   stops reconnecting; any other failure is retried with backoff.
 *
 * Reconnects use exponential backoff with jitter. Close codes 3500–3999 and 4500–4999
 * (or a disconnect advice with `reconnect: false`) end the session without reconnecting.
 */

const VERSION = '0.1.0';

/** Client states. */
const STATES = Object.freeze({
  DISCONNECTED: 'disconnected',
  CONNECTING: 'connecting',
  CONNECTED: 'connected',
});

/** Subscription states. */
const SUB_STATES = Object.freeze({
  UNSUBSCRIBED: 'unsubscribed',
  SUBSCRIBING: 'subscribing',
  SUBSCRIBED: 'subscribed',
});

/** Client-side error codes (server error codes are numbers, these are strings). */
const ERRORS = Object.freeze({
  TIMEOUT: 'timeout',
  DISCONNECTED: 'disconnected',
  TRANSPORT_READONLY: 'transport_readonly',
  UNAUTHORIZED: 'unauthorized',
  BAD_STATE: 'bad_state',
});

const DEFAULTS = {
  token: '',
  getToken: null,
  data: undefined,
  name: 'clarion-js',
  debug: false,
  transports: ['websocket', 'sse'],
  wsFailuresBeforeFallback: 3,
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  timeout: 10000,
  maxServerPingDelay: 10000,
  websocket: null,
  eventsource: null,
  sseUrl: null,
  listenNetworkEvents: true,
};

export class ClarionError extends Error {
  /**
   * @param {string|number} code  server error code (number) or one of Clarion.errors
   * @param {string} message
   * @param {boolean} [temporary]
   */
  constructor(code, message, temporary = false) {
    super(message);
    this.name = 'ClarionError';
    this.code = code;
    this.temporary = temporary;
  }
}

class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Register `fn` for `event`; returns a function that removes it. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }

  _emit(event, ctx) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(ctx);
      } catch (err) {
        // A handler's bug must not break the protocol state machine.
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }
}

function backoff(attempt, min, max) {
  // Exponential backoff with "equal jitter": half fixed, half random.
  const ceiling = Math.min(max, min * Math.pow(2, Math.min(attempt, 30)));
  return Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
}

function isNumber(v) {
  return typeof v === 'number' && Number.isFinite(v);
}

/** Split a ws(s)/http(s) URL into the WebSocket URL and the SSE URL. */
function resolveUrls(url, sseUrl) {
  const base =
    typeof location !== 'undefined' && location && location.href ? location.href : undefined;
  const u = new URL(url, base);
  let httpProto = u.protocol;
  if (httpProto === 'ws:') httpProto = 'http:';
  if (httpProto === 'wss:') httpProto = 'https:';
  const wsProto = httpProto === 'https:' ? 'wss:' : 'ws:';
  let path = u.pathname.replace(/\/+$/, '');
  let wsPath;
  if (/\/connection\/websocket$/.test(path)) {
    wsPath = path;
    path = path.replace(/\/connection\/websocket$/, '');
  } else {
    wsPath = path + '/connection/websocket';
  }
  const host = u.host;
  return {
    ws: `${wsProto}//${host}${wsPath}${u.search}`,
    sse: sseUrl ? new URL(sseUrl, `${httpProto}//${host}/`).toString()
      : `${httpProto}//${host}${path}/connection/sse`,
  };
}

/**
 * One channel subscription. Create it with `client.subscribe(channel, handlers)`.
 * Events: 'publication', 'join', 'leave', 'subscribing', 'subscribed', 'unsubscribed',
 * 'unrecoverable', 'error'.
 */
export class Subscription extends Emitter {
  constructor(client, channel, options = {}) {
    super();
    this._client = client;
    this.channel = channel;
    this.state = SUB_STATES.UNSUBSCRIBED;
    this._token = options.token || '';
    this._data = options.data;
    // Ask the hub for join/leave pushes (it sends them only on request, unless the namespace
    // forces them): on by default when an onJoin/onLeave handler is given.
    this._joinLeave = options.joinLeave !== undefined ? !!options.joinLeave
      : typeof options.onJoin === 'function' || typeof options.onLeave === 'function';
    // Stream position, for recovery and de-duplication.
    this._epoch = null;
    this._offset = null;
    this._recoverable = false;
    this._pending = []; // pushes received while (re)subscribing
    this._retry = 0;
    this._retryTimer = null;
    this._inflight = null;
    const map = {
      onPublication: 'publication',
      onJoin: 'join',
      onLeave: 'leave',
      onSubscribing: 'subscribing',
      onSubscribed: 'subscribed',
      onUnsubscribed: 'unsubscribed',
      onUnrecoverable: 'unrecoverable',
      onError: 'error',
    };
    for (const [opt, event] of Object.entries(map)) {
      if (typeof options[opt] === 'function') this.on(event, options[opt]);
    }
  }

  /** The last stream position seen: {epoch, offset} (null members before the first one). */
  get position() {
    return { epoch: this._epoch, offset: this._offset };
  }

  /** Publish data into the channel (WebSocket transport only). Resolves with the reply. */
  publish(data) {
    return this._client._call('publish', { channel: this.channel, data });
  }

  /** Who is subscribed: resolves with `{clients: {clientId: {user, client, conn_info, chan_info}}}`. */
  async presence() {
    const r = await this._client._call('presence', { channel: this.channel });
    return { clients: (r && r.presence) || {} };
  }

  /** Resolves with `{clients, users}` counts. */
  async presenceStats() {
    const r = await this._client._call('presence_stats', { channel: this.channel });
    return { numClients: (r && r.num_clients) || 0, numUsers: (r && r.num_users) || 0 };
  }

  /** Channel history: `{publications, epoch, offset}`. opts: {limit, since: {offset, epoch}, reverse}. */
  async history(opts = {}) {
    const params = { channel: this.channel };
    if (opts.limit !== undefined) params.limit = opts.limit;
    if (opts.since) params.since = opts.since;
    if (opts.reverse) params.reverse = true;
    const r = (await this._client._call('history', params)) || {};
    const publications = (r.publications || []).map((p) => this._pubContext(p));
    return { publications, epoch: r.epoch, offset: r.offset };
  }

  /** Subscribe again after `unsubscribe()`. */
  subscribe() {
    if (this.state !== SUB_STATES.UNSUBSCRIBED) return;
    this._client._subs.set(this.channel, this);
    this._setSubscribing('subscribe called');
    this._client._subscriptionsChanged(this);
  }

  /** Leave the channel. The subscription keeps its handlers and may `subscribe()` again. */
  unsubscribe() {
    if (this.state === SUB_STATES.UNSUBSCRIBED) return;
    // A subscribe still in flight may succeed on the hub: undo it too.
    const onHub = this.state === SUB_STATES.SUBSCRIBED || this._inflight !== null;
    this._setUnsubscribed(0, 'unsubscribe called');
    this._inflight = null;
    // Leaving on purpose: a later subscribe() starts from now, it does not recover the gap.
    this._epoch = null;
    this._offset = null;
    this._client._subs.delete(this.channel);
    if (onHub && this._client._isWsConnected()) {
      this._client._call('unsubscribe', { channel: this.channel }).catch(() => {});
    }
    this._client._subscriptionsChanged(this);
  }

  _setSubscribing(reason) {
    if (this.state === SUB_STATES.SUBSCRIBING) return;
    this.state = SUB_STATES.SUBSCRIBING;
    this._emit('subscribing', { channel: this.channel, reason });
  }

  _setUnsubscribed(code, reason) {
    this._clearRetry();
    this._pending = [];
    if (this.state === SUB_STATES.UNSUBSCRIBED) return;
    this.state = SUB_STATES.UNSUBSCRIBED;
    this._emit('unsubscribed', { channel: this.channel, code, reason });
  }

  _clearRetry() {
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  /** Send the subscribe command over the WebSocket (called when connected). */
  _sendSubscribe() {
    if (this.state === SUB_STATES.UNSUBSCRIBED || this._inflight) return;
    this._clearRetry();
    const params = { channel: this.channel };
    if (this._token) params.token = this._token;
    if (this._data !== undefined) params.data = this._data;
    if (this._joinLeave) params.join_leave = true;
    const recovering = this._recoverable && this._epoch !== null && this._offset !== null;
    if (recovering) {
      params.recover = true;
      params.epoch = this._epoch;
      params.offset = this._offset;
    }
    const client = this._client;
    const session = client._session;
    const inflight = {};
    this._inflight = inflight;
    client._debug('subscribe', params);
    client._call('subscribe', params, { wait: false }).then(
      (result) => {
        if (this._inflight === inflight) this._inflight = null;
        if (session !== client._session || this.state !== SUB_STATES.SUBSCRIBING) return;
        this._onSubscribeResult(result || {}, recovering);
      },
      (err) => {
        if (this._inflight === inflight) this._inflight = null;
        if (session !== client._session || this.state !== SUB_STATES.SUBSCRIBING) return;
        this._onSubscribeError(err);
      },
    );
  }

  _onSubscribeResult(result, recovering) {
    this._retry = 0;
    const wasRecovering = result.was_recovering !== undefined ? !!result.was_recovering : recovering;
    const recovered = !!result.recovered;
    if (result.epoch !== undefined && this._epoch !== null && result.epoch !== this._epoch) {
      // A new stream: old offsets mean nothing in it.
      this._offset = null;
    }
    if (result.recoverable !== undefined) this._recoverable = !!result.recoverable;
    if (result.epoch !== undefined) this._epoch = result.epoch;
    this.state = SUB_STATES.SUBSCRIBED;
    this._emit('subscribed', {
      channel: this.channel,
      recoverable: this._recoverable,
      positioned: !!result.positioned,
      recovered,
      wasRecovering,
      epoch: result.epoch,
      offset: result.offset,
      data: result.data,
    });
    for (const pub of result.publications || []) this._onPublication(pub);
    if (isNumber(result.offset) && (this._offset === null || result.offset > this._offset)) {
      this._offset = result.offset;
    }
    const pending = this._pending;
    this._pending = [];
    for (const push of pending) this._onPush(push);
    if (wasRecovering && !recovered) {
      this._emit('unrecoverable', {
        channel: this.channel,
        epoch: result.epoch,
        offset: result.offset,
        reason: 'publications missed while disconnected could not be recovered',
      });
    }
  }

  _onSubscribeError(err) {
    const code = err && err.code;
    const temporary =
      (err && err.temporary) ||
      code === ERRORS.TIMEOUT ||
      code === ERRORS.DISCONNECTED ||
      code === 109 || // token expired
      (isNumber(code) && code < 100);
    this._emit('error', { channel: this.channel, error: err });
    if (code === 105) {
      // "already subscribed": the server has us; treat as subscribed.
      this.state = SUB_STATES.SUBSCRIBED;
      return;
    }
    if (!temporary) {
      this._client._subs.delete(this.channel);
      this._setUnsubscribed(code, (err && err.message) || 'subscribe error');
      return;
    }
    const client = this._client;
    const delay = backoff(this._retry++, client._opts.minReconnectDelay, client._opts.maxReconnectDelay);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      if (client._isWsConnected()) this._sendSubscribe();
    }, delay);
  }

  /** A push for this channel: {pub} | {join} | {leave} | {unsubscribe} | ... */
  _onPush(push) {
    if (this.state === SUB_STATES.SUBSCRIBING) {
      this._pending.push(push);
      return;
    }
    if (this.state !== SUB_STATES.SUBSCRIBED) return;
    if (push.pub) this._onPublication(push.pub);
    else if (push.join) this._emit('join', { channel: this.channel, info: push.join.info || {} });
    else if (push.leave) this._emit('leave', { channel: this.channel, info: push.leave.info || {} });
    else if (push.unsubscribe) this._onServerUnsubscribe(push.unsubscribe);
  }

  _onServerUnsubscribe(u) {
    const code = u.code || 0;
    if (code >= 2500 && code < 3000) {
      // Temporary: resubscribe.
      this.state = SUB_STATES.UNSUBSCRIBED;
      this._setSubscribing(u.reason || 'resubscribe');
      if (this._client._isWsConnected()) this._sendSubscribe();
      return;
    }
    this._client._subs.delete(this.channel);
    this._setUnsubscribed(code, u.reason || 'unsubscribed by server');
  }

  _pubContext(pub) {
    const ctx = { channel: this.channel, data: pub.data };
    if (pub.offset !== undefined) ctx.offset = pub.offset;
    if (pub.info) ctx.info = pub.info;
    if (pub.tags) ctx.tags = pub.tags;
    return ctx;
  }

  _onPublication(pub) {
    const off = pub.offset;
    if (isNumber(off) && off > 0) {
      if (this._offset !== null && off <= this._offset) {
        this._client._debug('duplicate publication skipped', this.channel, off);
        return;
      }
      this._offset = off;
    }
    this._emit('publication', this._pubContext(pub));
  }
}

/** The client. Events: 'connecting', 'connected', 'disconnected', 'transport', 'error', 'publication'. */
export class Clarion extends Emitter {
  /**
   * @param {string} url  `ws(s)://host/connection/websocket` or the hub's `http(s)://host` base.
   * @param {object} [options]  see DEFAULTS and the header comment.
   */
  constructor(url, options = {}) {
    super();
    this._opts = { ...DEFAULTS, ...options };
    const urls = resolveUrls(url, this._opts.sseUrl);
    this._wsUrl = urls.ws;
    this._sseUrl = urls.sse;
    this._WS = this._opts.websocket || (typeof WebSocket !== 'undefined' ? WebSocket : null);
    this._ES = this._opts.eventsource || (typeof EventSource !== 'undefined' ? EventSource : null);
    this._transports = (this._opts.transports || ['websocket']).filter(
      (t) => (t === 'websocket' && this._WS) || (t === 'sse' && this._ES),
    );
    this.state = STATES.DISCONNECTED;
    this.transport = null; // name of the transport in use
    this.clientId = null;
    this._subs = new Map();
    this._tIndex = 0;
    this._wsEverConnected = false;
    this._wsFailures = 0;
    this._sseFailures = 0;
    this._attempt = 0; // reconnect attempt (for backoff)
    this._gen = 0; // incremented for each transport attempt; stale callbacks compare it
    this._session = 0; // incremented on every established connection
    this._reconnectTimer = null;
    this._connectTimer = null;
    this._pingTimer = null;
    this._refreshTimer = null;
    this._firstTokenUsed = false;
    this._token = this._opts.token || '';
    this._ws = null;
    this._es = null;
    this._sseSession = null;
    this._sseCursor = null;
    this._sseReopenScheduled = false;
    this._nextId = 1;
    this._calls = new Map();
    this._outbox = [];
    this._flushScheduled = false;
    this._pong = false;
    this._pingInterval = 0;
    this._waiters = new Set();
    this._netHandlersInstalled = false;
  }

  static get states() {
    return STATES;
  }

  static get subStates() {
    return SUB_STATES;
  }

  static get errors() {
    return ERRORS;
  }

  static get version() {
    return VERSION;
  }

  /** Start connecting (no-op when already connecting or connected). */
  connect() {
    if (this.state !== STATES.DISCONNECTED) return;
    if (this._transports.length === 0) {
      this._emit('error', {
        error: new ClarionError(ERRORS.BAD_STATE, 'no transport available (WebSocket/EventSource missing)'),
      });
      return;
    }
    this._installNetworkHandlers();
    this._attempt = 0;
    this._setConnecting(0, 'connect called');
    this._startAttempt();
  }

  /** Close the connection and stop reconnecting. Subscriptions keep their position. */
  disconnect() {
    this._disconnect(0, 'disconnect called', false);
  }

  /**
   * Subscribe to a channel. handlers: {onPublication, onJoin, onLeave, onSubscribing,
   * onSubscribed, onUnsubscribed, onUnrecoverable, onError, token, data, joinLeave}.
   * `joinLeave` (default: true when onJoin or onLeave is given) asks for join/leave pushes.
   */
  subscribe(channel, handlers = {}) {
    if (this._subs.has(channel)) {
      throw new ClarionError(ERRORS.BAD_STATE, `already subscribed to ${channel}`);
    }
    const sub = new Subscription(this, channel, handlers);
    sub.subscribe();
    return sub;
  }

  getSubscription(channel) {
    return this._subs.get(channel) || null;
  }

  subscriptions() {
    return [...this._subs.values()];
  }

  /** Publish into a channel without subscribing (WebSocket only). */
  publish(channel, data) {
    return this._call('publish', { channel, data });
  }

  /** Send an asynchronous message to the server (WebSocket only; no reply). */
  async send(data) {
    await this._ready();
    this._enqueue({ send: { data } });
  }

  /** Resolves once connected (rejects after `timeout` ms or on a final disconnect). */
  ready(timeout) {
    return this._ready(timeout);
  }

  // ---- internals: state --------------------------------------------------------------

  _debug(...args) {
    if (this._opts.debug && typeof console !== 'undefined') console.debug('[clarion]', ...args);
  }

  _isWsConnected() {
    return this.state === STATES.CONNECTED && this.transport === 'websocket';
  }

  _setConnecting(code, reason) {
    const was = this.state;
    this.state = STATES.CONNECTING;
    if (was !== STATES.CONNECTING) this._emit('connecting', { code, reason });
  }

  _installNetworkHandlers() {
    if (this._netHandlersInstalled || !this._opts.listenNetworkEvents) return;
    if (typeof globalThis.addEventListener !== 'function' || typeof navigator === 'undefined') return;
    this._netHandlersInstalled = true;
    globalThis.addEventListener('offline', () => {
      if (this.state === STATES.DISCONNECTED) return;
      this._debug('browser went offline');
      this._transportLost(1006, 'network offline', true);
    });
    globalThis.addEventListener('online', () => {
      if (this.state !== STATES.CONNECTING || !this._reconnectTimer) return;
      this._debug('browser back online: reconnecting now');
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._attempt = 0;
      this._startAttempt();
    });
  }

  _disconnect(code, reason, reconnect) {
    if (this.state === STATES.DISCONNECTED) return;
    this._closeTransport(1000, reason);
    if (reconnect) {
      this._setConnecting(code, reason);
      this._scheduleReconnect();
      return;
    }
    this._clearTimers();
    const was = this.state;
    this.state = STATES.DISCONNECTED;
    this.transport = null;
    for (const w of [...this._waiters]) w.reject(new ClarionError(ERRORS.DISCONNECTED, reason));
    if (was !== STATES.DISCONNECTED) this._emit('disconnected', { code, reason, reconnect: false });
  }

  _clearTimers() {
    for (const t of ['_reconnectTimer', '_connectTimer', '_pingTimer', '_refreshTimer']) {
      if (this[t]) clearTimeout(this[t]);
      this[t] = null;
    }
  }

  /** Tear down the current transport object (no state changes beyond that). */
  _closeTransport(code, reason) {
    this._gen++;
    if (this._connectTimer) clearTimeout(this._connectTimer);
    this._connectTimer = null;
    if (this._pingTimer) clearTimeout(this._pingTimer);
    this._pingTimer = null;
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (this._ws) {
      const ws = this._ws;
      this._ws = null;
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close(code, reason && reason.length < 100 ? reason : undefined);
      } catch (e) {
        try {
          ws.close();
        } catch (e2) {
          /* ignore */
        }
      }
    }
    if (this._es) {
      this._es.onopen = this._es.onmessage = this._es.onerror = null;
      this._es.close();
      this._es = null;
    }
    this._outbox = [];
    const err = new ClarionError(ERRORS.DISCONNECTED, reason || 'connection closed', true);
    for (const call of this._calls.values()) {
      clearTimeout(call.timer);
      call.reject(err);
    }
    this._calls.clear();
    for (const sub of this._subs.values()) {
      sub._inflight = null;
      sub._clearRetry();
      if (sub.state === SUB_STATES.SUBSCRIBED) sub._setSubscribing('transport closed');
    }
  }

  /** The connection dropped (or failed): decide whether and how to reconnect. */
  _transportLost(code, reason, reconnect, opened = true) {
    if (this.state === STATES.DISCONNECTED) return;
    const name = this.transport;
    if (name === 'websocket' && !opened && !this._wsEverConnected) {
      this._wsFailures++;
      if (this._wsFailures >= this._opts.wsFailuresBeforeFallback) this._nextTransport();
    } else if (name === 'sse' && !opened) {
      this._sseFailures++;
      if (this._sseFailures >= this._opts.wsFailuresBeforeFallback && !this._wsEverConnected) {
        this._nextTransport();
      }
    }
    this._debug('transport lost', { code, reason, reconnect });
    this._disconnect(code, reason, reconnect);
  }

  _nextTransport() {
    if (this._transports.length < 2) return;
    this._tIndex = (this._tIndex + 1) % this._transports.length;
    this._wsFailures = 0;
    this._sseFailures = 0;
    this._debug('switching to transport', this._transports[this._tIndex]);
  }

  _scheduleReconnect() {
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    const delay = backoff(this._attempt++, this._opts.minReconnectDelay, this._opts.maxReconnectDelay);
    this._debug('reconnect in', delay, 'ms');
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this._startAttempt();
    }, delay);
  }

  async _getToken(needFresh) {
    if (!needFresh) return '';
    if (!this._firstTokenUsed && this._token) {
      this._firstTokenUsed = true;
      return this._token;
    }
    this._firstTokenUsed = true;
    if (typeof this._opts.getToken === 'function') {
      const t = await this._opts.getToken();
      this._token = t || '';
    }
    return this._token;
  }

  async _startAttempt() {
    if (this.state !== STATES.CONNECTING) return;
    const gen = ++this._gen;
    const name = this._transports[this._tIndex];
    if (this.transport !== name) {
      this.transport = name;
      this._emit('transport', { name });
    }
    // SSE resumes with its session instead of a (possibly single-use) token.
    const useSession = name === 'sse' && !!this._sseSession;
    let token;
    try {
      token = await this._getToken(!useSession);
    } catch (err) {
      if (gen !== this._gen || this.state !== STATES.CONNECTING) return;
      this._emit('error', { error: err, type: 'token' });
      if (err && err.code === ERRORS.UNAUTHORIZED) {
        this._disconnect(3500, 'unauthorized', false);
      } else {
        this._scheduleReconnect();
      }
      return;
    }
    if (gen !== this._gen || this.state !== STATES.CONNECTING) return;
    this._connectTimer = setTimeout(() => {
      if (gen !== this._gen) return;
      this._debug('connect timeout');
      this._transportLost(0, 'connect timeout', true, false);
    }, this._opts.timeout);
    if (name === 'websocket') this._openWebSocket(token, gen);
    else this._openSse(token, useSession, gen);
  }

  _onConnected(result, transportName) {
    if (this._connectTimer) clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this._session++;
    this._attempt = 0;
    this.clientId = result.client || null;
    this.state = STATES.CONNECTED;
    this.transport = transportName;
    if (transportName === 'websocket') {
      this._wsEverConnected = true;
      this._wsFailures = 0;
    } else {
      this._sseFailures = 0;
    }
    this._emit('connected', {
      client: result.client,
      transport: transportName,
      version: result.version,
      data: result.data,
    });
    for (const w of [...this._waiters]) w.resolve();
  }

  _ready(timeout) {
    if (this.state === STATES.CONNECTED) {
      if (this.transport !== 'websocket') return Promise.reject(this._readonlyError());
      return Promise.resolve();
    }
    if (this.state === STATES.DISCONNECTED) {
      return Promise.reject(new ClarionError(ERRORS.DISCONNECTED, 'client is disconnected'));
    }
    return new Promise((resolve, reject) => {
      const w = {
        resolve: () => {
          cleanup();
          if (this.transport !== 'websocket') reject(this._readonlyError());
          else resolve();
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      };
      const timer = setTimeout(
        () => w.reject(new ClarionError(ERRORS.TIMEOUT, 'timed out waiting for the connection', true)),
        timeout === undefined ? this._opts.timeout : timeout,
      );
      const cleanup = () => {
        clearTimeout(timer);
        this._waiters.delete(w);
      };
      this._waiters.add(w);
    });
  }

  _readonlyError() {
    return new ClarionError(
      ERRORS.TRANSPORT_READONLY,
      `this operation requires the WebSocket transport; ${this.transport} is receive-only`,
    );
  }

  // ---- internals: commands -----------------------------------------------------------

  /**
   * Send a command and resolve with its reply. opts.wait=false fails fast when not
   * connected instead of waiting for the connection.
   */
  async _call(method, params, opts = {}) {
    if (this.state === STATES.CONNECTED && this.transport === 'sse') throw this._readonlyError();
    if (!this._isWsConnected()) {
      if (opts.wait === false) throw new ClarionError(ERRORS.DISCONNECTED, 'not connected', true);
      await this._ready();
    }
    return this._request(method, params);
  }

  _request(method, params) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._calls.delete(id);
        reject(new ClarionError(ERRORS.TIMEOUT, `${method} timed out`, true));
      }, this._opts.timeout);
      this._calls.set(id, { resolve, reject, timer, method });
      this._enqueue({ id, [method]: params });
    });
  }

  _enqueue(cmd) {
    this._outbox.push(JSON.stringify(cmd));
    if (this._flushScheduled) return;
    this._flushScheduled = true;
    // Commands issued in the same tick go out as one newline-separated frame.
    queueMicrotask(() => {
      this._flushScheduled = false;
      this._flush();
    });
  }

  _flush() {
    if (!this._ws || this._outbox.length === 0) return;
    const frame = this._outbox.join('\n');
    this._outbox = [];
    this._debug('send', frame);
    try {
      this._ws.send(frame);
    } catch (err) {
      this._debug('send failed', err);
    }
  }

  // ---- internals: WebSocket ----------------------------------------------------------

  _openWebSocket(token, gen) {
    let ws;
    try {
      ws = new this._WS(this._wsUrl);
    } catch (err) {
      this._debug('WebSocket constructor failed', err);
      this._wsFailures = this._opts.wsFailuresBeforeFallback; // unusable: fall back at once
      this._transportLost(0, 'websocket unavailable', true, false);
      return;
    }
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (gen !== this._gen) return;
      const connect = { name: this._opts.name, version: VERSION };
      if (token) connect.token = token;
      if (this._opts.data !== undefined) connect.data = this._opts.data;
      this._request('connect', connect).then(
        (result) => {
          if (gen !== this._gen) return;
          opened = true;
          this._onWsConnected(result || {}, gen);
        },
        (err) => {
          if (gen !== this._gen) return;
          this._onConnectError(err);
        },
      );
    };
    ws.onmessage = (ev) => {
      if (gen !== this._gen) return;
      this._onFrame(ev.data);
    };
    ws.onerror = () => {
      this._debug('websocket error');
    };
    ws.onclose = (ev) => {
      if (gen !== this._gen) return;
      let code = ev.code || 1006;
      let reason = ev.reason || 'connection closed';
      let reconnect = !((code >= 3500 && code < 4000) || (code >= 4500 && code < 5000));
      if (ev.reason) {
        try {
          const advice = JSON.parse(ev.reason);
          if (advice && typeof advice === 'object') {
            reason = advice.reason || reason;
            if (typeof advice.reconnect === 'boolean') reconnect = advice.reconnect;
          }
        } catch (e) {
          /* plain text reason */
        }
      }
      if (code === 1009) reconnect = false; // message too big: retrying won't help
      this._ws = null;
      this._transportLost(code, reason, reconnect, opened);
    };
  }

  _onConnectError(err) {
    const code = err && err.code;
    this._emit('error', { error: err, type: 'connect' });
    if (code === 109 || (err && err.temporary) || (isNumber(code) && code < 100) ||
        code === ERRORS.TIMEOUT || code === ERRORS.DISCONNECTED) {
      this._transportLost(isNumber(code) ? code : 0, (err && err.message) || 'connect error', true, false);
    } else {
      this._disconnect(isNumber(code) ? code : 0, (err && err.message) || 'connect error', false);
    }
  }

  _onWsConnected(result, gen) {
    this._pong = !!result.pong;
    this._pingInterval = result.ping || 0;
    this._onConnected(result, 'websocket');
    this._armPingTimer(gen);
    this._scheduleRefresh(result, gen);
    if (result.subs) this._onServerSubs(result.subs);
    for (const sub of this._subs.values()) sub._sendSubscribe();
  }

  /** An expiring connection token is refreshed (with getToken) before the hub drops us. */
  _scheduleRefresh(result, gen) {
    if (this._refreshTimer) clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!result || !result.expires || !isNumber(result.ttl)) return;
    if (typeof this._opts.getToken !== 'function') return;
    const ms = result.ttl * 1000;
    const delay = Math.min(2 ** 31 - 1, Math.max(0, ms - Math.min(10000, ms / 10)));
    this._refreshTimer = setTimeout(() => this._refresh(gen, 0), delay);
  }

  async _refresh(gen, attempt) {
    this._refreshTimer = null;
    if (gen !== this._gen || !this._isWsConnected()) return;
    let token;
    try {
      token = await this._opts.getToken();
    } catch (err) {
      if (gen !== this._gen) return;
      this._emit('error', { error: err, type: 'refresh' });
      if (err && err.code === ERRORS.UNAUTHORIZED) {
        this._disconnect(3500, 'unauthorized', false);
        return;
      }
      const delay = backoff(attempt, this._opts.minReconnectDelay, this._opts.maxReconnectDelay);
      this._refreshTimer = setTimeout(() => this._refresh(gen, attempt + 1), delay);
      return;
    }
    if (gen !== this._gen || !this._isWsConnected()) return;
    this._token = token || '';
    try {
      const result = await this._request('refresh', { token: this._token });
      if (gen === this._gen) this._scheduleRefresh(result, gen);
    } catch (err) {
      if (gen !== this._gen) return;
      this._emit('error', { error: err, type: 'refresh' });
      // Left alone, the hub disconnects us at expiry and we reconnect with a fresh token.
      if (err && (err.temporary || err.code === ERRORS.TIMEOUT)) {
        const delay = backoff(attempt, this._opts.minReconnectDelay, this._opts.maxReconnectDelay);
        this._refreshTimer = setTimeout(() => this._refresh(gen, attempt + 1), delay);
      }
    }
  }

  _armPingTimer(gen) {
    if (this._pingTimer) clearTimeout(this._pingTimer);
    this._pingTimer = null;
    if (!this._pingInterval || gen !== this._gen) return;
    this._pingTimer = setTimeout(() => {
      if (gen !== this._gen) return;
      this._debug('no ping from server: reconnecting');
      this._transportLost(3012, 'no ping', true);
    }, this._pingInterval * 1000 + this._opts.maxServerPingDelay);
  }

  _onFrame(data) {
    if (typeof data !== 'string') {
      this._debug('ignoring binary frame');
      return;
    }
    const gen = this._gen;
    for (const line of data.split('\n')) {
      if (gen !== this._gen) return; // a handler closed the connection
      const text = line.trim();
      if (!text) continue;
      let msg;
      try {
        msg = JSON.parse(text);
      } catch (e) {
        this._debug('bad JSON from server', text);
        continue;
      }
      this._onMessage(msg, gen);
    }
  }

  _onMessage(msg, gen) {
    if (this.state === STATES.CONNECTED) this._armPingTimer(gen);
    if (msg.id) {
      const call = this._calls.get(msg.id);
      if (!call) return;
      this._calls.delete(msg.id);
      clearTimeout(call.timer);
      if (msg.error) {
        call.reject(new ClarionError(msg.error.code, msg.error.message || 'error', !!msg.error.temporary));
      } else {
        call.resolve(msg[call.method] !== undefined ? msg[call.method] : {});
      }
      return;
    }
    if (msg.push) {
      this._onPush(msg.push);
      return;
    }
    if (Object.keys(msg).length === 0) {
      // Server ping.
      if (this._pong) {
        this._enqueue({});
      }
    }
  }

  _onPush(push) {
    if (push.disconnect) {
      const d = push.disconnect;
      this._transportLost(d.code || 0, d.reason || 'disconnected by server', d.reconnect !== false);
      return;
    }
    if (push.message) {
      this._emit('message', { data: push.message.data });
      return;
    }
    const channel = push.channel;
    if (!channel) return;
    const sub = this._subs.get(channel);
    if (sub) {
      sub._onPush(push);
      return;
    }
    // Server-side subscription (not created by this client).
    if (push.pub) this._emit('publication', { channel, data: push.pub.data, offset: push.pub.offset, info: push.pub.info });
    else if (push.join) this._emit('join', { channel, info: push.join.info });
    else if (push.leave) this._emit('leave', { channel, info: push.leave.info });
  }

  _onServerSubs(subs) {
    for (const [channel, r] of Object.entries(subs)) {
      this._emit('subscribed', { channel, ...r });
      for (const pub of (r && r.publications) || []) {
        this._emit('publication', { channel, data: pub.data, offset: pub.offset, info: pub.info });
      }
    }
  }

  // ---- internals: SSE ----------------------------------------------------------------

  /** The subscriptions changed: over SSE the stream must be reopened with the new channel set. */
  _subscriptionsChanged(sub) {
    if (this.transport === 'websocket') {
      if (this._isWsConnected() && sub.state === SUB_STATES.SUBSCRIBING) sub._sendSubscribe();
      return;
    }
    if (this.transport !== 'sse' || this.state === STATES.DISCONNECTED) return;
    if (this._sseReopenScheduled) return;
    this._sseReopenScheduled = true;
    queueMicrotask(() => {
      this._sseReopenScheduled = false;
      if (this.transport !== 'sse' || this.state === STATES.DISCONNECTED) return;
      // A new channel set needs a token (the session covered the old set).
      this._sseSession = null;
      this._closeTransport(1000, 'channels changed');
      this._setConnecting(0, 'channels changed');
      this._startAttempt();
    });
  }

  _openSse(token, useSession, gen) {
    const channels = [...this._subs.keys()];
    const q = new URLSearchParams();
    for (const ch of channels) q.append('channel', ch);
    if (useSession) q.set('session', this._sseSession);
    else if (token) q.set('token', token);
    if (this._sseCursor) q.set('cursor', this._sseCursor);
    const url = this._sseUrl + (this._sseUrl.includes('?') ? '&' : '?') + q.toString();
    this._debug('sse open', url);
    let es;
    try {
      es = new this._ES(url);
    } catch (err) {
      this._transportLost(0, 'eventsource unavailable', true, false);
      return;
    }
    this._es = es;
    let opened = false;
    es.onmessage = (ev) => {
      if (gen !== this._gen) return;
      if (ev.lastEventId) this._sseCursor = ev.lastEventId;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        this._debug('bad SSE data', ev.data);
        return;
      }
      if (msg.connect) {
        opened = true;
        if (msg.connect.session) this._sseSession = msg.connect.session;
        this._pingInterval = 0;
        this._onConnected(msg.connect, 'sse');
        this._onSseSubs(msg.connect.subs || {});
        return;
      }
      if (msg.disconnect) {
        const d = msg.disconnect;
        const code = d.code || 0;
        let reconnect = d.reconnect;
        if (reconnect === undefined) reconnect = !((code >= 3500 && code < 4000) || (code >= 4500 && code < 5000));
        if (!reconnect) this._sseSession = null;
        this._transportLost(code, d.reason || 'disconnected by server', reconnect, true);
        return;
      }
      this._onPush(msg);
    };
    es.addEventListener('unrecoverable', (ev) => {
      if (gen !== this._gen) return;
      if (ev.lastEventId) this._sseCursor = ev.lastEventId;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      const sub = this._subs.get(msg.channel);
      if (!sub) return;
      sub._epoch = msg.epoch !== undefined ? msg.epoch : sub._epoch;
      sub._offset = isNumber(msg.offset) ? msg.offset : null;
      sub._emit('unrecoverable', {
        channel: msg.channel,
        epoch: msg.epoch,
        offset: msg.offset,
        reason: 'publications missed while disconnected could not be recovered',
      });
    });
    es.onerror = () => {
      if (gen !== this._gen) return;
      // Reopen ourselves (the browser's own retry would reuse a single-use token).
      if (!opened) this._sseSession = null; // maybe the session was rejected: use a token next
      this._transportLost(1006, 'sse error', true, opened);
    };
  }

  _onSseSubs(subs) {
    // Over SSE the hub replays missed publications as ordinary events after this one, and
    // reports a lost position with `event: unrecoverable`; so only the epoch is taken here.
    for (const [channel, r] of Object.entries(subs)) {
      const sub = this._subs.get(channel);
      if (!sub || sub.state === SUB_STATES.UNSUBSCRIBED) continue;
      const wasRecovering = sub._epoch !== null && !!this._sseCursor;
      if (r.epoch !== undefined && sub._epoch !== null && r.epoch !== sub._epoch) sub._offset = null;
      if (r.epoch !== undefined) sub._epoch = r.epoch;
      if (r.recoverable !== undefined) sub._recoverable = !!r.recoverable;
      sub.state = SUB_STATES.SUBSCRIBED;
      sub._retry = 0;
      sub._emit('subscribed', {
        channel,
        recoverable: sub._recoverable,
        positioned: !!r.positioned,
        recovered: r.recovered !== undefined ? !!r.recovered : wasRecovering,
        wasRecovering,
        epoch: r.epoch,
        offset: r.offset,
        data: r.data,
      });
      const pending = sub._pending;
      sub._pending = [];
      for (const push of pending) sub._onPush(push);
    }
  }
}

export default Clarion;

if (typeof window !== 'undefined' && !window.Clarion) {
  window.Clarion = Clarion;
}
