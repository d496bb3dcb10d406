// @herald/client's API, shared by both entry points (index.js for browsers and bundlers,
// node.js for Node): the connection, the Socket.IO framing, the channel name rules and
// reconnection run in WebAssembly (crate herald-wasm); this file gives them an event-emitter
// API. Declarations: index.d.ts. Internal: import the package, not this file.

import init, { WasmClient, parseChannelName as wasmParseChannelName } from './herald_wasm.js';

let loading;

/**
 * How `initHerald` turns its argument (undefined: the default module) into what wasm-bindgen's
 * `init` takes. The browser entry keeps it as is (a URL is fetched, by default
 * `herald_wasm_bg.wasm` next to herald_wasm.js); the Node entry reads files instead.
 */
let resolveSource = async (moduleOrPath) => moduleOrPath;

/** Used by node.js only. */
export function setWasmSource(resolve) {
  resolveSource = resolve;
}

/**
 * Loads the WebAssembly module (once). `HeraldClient` does it on first use; call it yourself
 * to load early or to pass the module or its URL when `herald_wasm_bg.wasm` is not served next
 * to this file.
 */
export function initHerald(moduleOrPath) {
  loading ??= Promise.resolve(moduleOrPath)
    .then((given) => resolveSource(given))
    .then((source) => init(source === undefined ? undefined : { module_or_path: source }))
    .then(
      () => undefined,
      (error) => {
        loading = undefined; // let a later call try again
        throw error;
      },
    );
  return loading;
}

/** An `Error` like the ones the engine rejects with: name `HeraldError` and a `code`. */
function heraldError(code, message) {
  const error = new Error(message);
  error.name = 'HeraldError';
  error.code = code;
  return error;
}

const NO_WEBSOCKET =
  'no WebSocket in this runtime (Node.js before 22 has none): pass a WebSocket class, e.g. ' +
  "`import { WebSocket } from 'ws'` (npm install ws) and " +
  'new HeraldClient(url, { projectId, WebSocket })';

/**
 * Checks a channel name with Herald's rules without connecting. Resolves with
 * `{ name, private }`; rejects with an Error whose `code` is `invalid_channel_name` or
 * `ambiguous_channel_name`.
 */
export async function parseChannelName(name) {
  await initHerald();
  return wasmParseChannelName(String(name));
}

const EVENTS = ['event', 'system_message', 'state', 'recovery', 'relisten_failed', 'presence', 'presence_synced'];

export class HeraldClient {
  #listeners = new Map(EVENTS.map((name) => [name, new Set()]));
  /** Resolves with the engine once the WebAssembly module is loaded. */
  #ready;
  /** The engine, once loaded. */
  #engine = null;

  /**
   * @param {string | URL} url the server's base URL (relative URLs resolve against the page)
   * @param {import('./index.d.ts').HeraldClientOptions} options
   */
  constructor(url, options) {
    if (options === null || typeof options !== 'object' || typeof options.projectId !== 'string') {
      throw new TypeError('new HeraldClient(url, { projectId }): projectId must be a string');
    }
    if (options.authorize !== undefined && typeof options.authorize !== 'function') {
      throw new TypeError('options.authorize must be a function (channelName) => token');
    }
    // The browser's (and Node 22+'s) global class unless one is passed (`ws` in Node 20).
    const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
    if (typeof WebSocketClass !== 'function') {
      throw heraldError('invalid_options', NO_WEBSOCKET);
    }
    const base = globalThis.location?.href;
    let absolute;
    try {
      absolute = new URL(String(url), base).href;
    } catch {
      const where = base === undefined ? ' (outside a web page it must be absolute, e.g. http://127.0.0.1:8080)' : '';
      throw heraldError('invalid_options', `invalid URL ${JSON.stringify(String(url))}${where}`);
    }
    /** The server's base URL, absolute. */
    this.url = absolute;
    const opts = { ...options, WebSocket: WebSocketClass };
    this.#ready = initHerald().then(() => {
      this.#engine = new WasmClient(this.url, opts, (kind, a, b) => this.#dispatch(kind, a, b));
      return this.#engine;
    });
    // A bad option surfaces on the first call (connect, listen, …), not as an unhandled rejection.
    this.#ready.catch(() => {});
  }

  /** `idle` (before connect), `connecting`, `connected`, `reconnecting` or `closed`. */
  get state() {
    return this.#engine?.state ?? 'idle';
  }

  /** The channels this client listens to (and re-listens to after a reconnection), sorted. */
  get channels() {
    return this.#engine?.channels ?? [];
  }

  /**
   * The members of a presence channel this client listens to: `[{ userId, info }]` ordered by
   * user id, its own member included (an empty array for any other channel). Already up to
   * date when a `presence` or `presence_synced` event is dispatched.
   */
  members(channelName) {
    return this.#engine?.members(String(channelName)) ?? [];
  }

  /** Connects; rejects with the server's code (e.g. `unknown_project`) when refused. */
  async connect() {
    await (await this.#ready).connect();
  }

  /** Listens to a channel; private channels get a token from `authorize` first. */
  async listen(channelName) {
    await (await this.#ready).listen(String(channelName));
  }

  /** Stops listening to a channel. */
  async remove(channelName) {
    await (await this.#ready).remove(String(channelName));
  }

  /** Closes the connection for good. */
  async close() {
    let engine;
    try {
      engine = await this.#ready;
    } catch {
      return; // never loaded: nothing to close
    }
    await engine.close();
  }

  /** Adds a listener; returns a function that removes it. */
  on(event, listener) {
    if (typeof listener !== 'function') throw new TypeError('listener must be a function');
    this.#set(event).add(listener);
    return () => this.off(event, listener);
  }

  /** Removes a listener added with `on`. */
  off(event, listener) {
    this.#set(event).delete(listener);
  }

  #set(event) {
    const set = this.#listeners.get(event);
    if (!set) {
      throw new TypeError(`unknown event ${JSON.stringify(event)}; expected one of ${EVENTS.join(', ')}`);
    }
    return set;
  }

  #dispatch(kind, a, b) {
    for (const listener of [...(this.#listeners.get(kind) ?? [])]) {
      try {
        listener(a, b);
      } catch (error) {
        // A throwing listener must not break the connection or the other listeners.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}
