// @herald/client: type declarations of the public API (hand-written; the WebAssembly glue's
// own declarations are in herald_wasm.d.ts and are not part of the API).

/** Error codes Herald answers with (docs/PROTOCOL.md § Error codes). */
export type ServerErrorCode =
  | 'invalid_body'
  | 'invalid_channel_name'
  | 'ambiguous_channel_name'
  | 'invalid_project_id'
  | 'payload_too_large'
  | 'payload_too_deep'
  | 'invalid_expiry'
  | 'channel_not_private'
  | 'missing_api_key'
  | 'unknown_api_key'
  | 'expired_api_key'
  | 'missing_scope'
  | 'missing_admin_token'
  | 'invalid_admin_token'
  | 'project_not_found'
  | 'project_exists'
  | 'api_key_not_found'
  | 'not_found'
  | 'webhook_not_found'
  | 'delivery_not_found'
  | 'too_many_webhooks'
  | 'invalid_webhook_url'
  | 'invalid_webhook_events'
  | 'method_not_allowed'
  | 'origin_not_allowed'
  | 'not_implemented'
  | 'missing_project_id'
  | 'unknown_project'
  | 'too_many_channels'
  | 'unknown_event'
  | 'not_joined'
  | 'client_event_not_allowed'
  | 'slow_consumer'
  | 'missed_events'
  | 'request_timeout'
  | 'too_many_connections'
  | 'at_capacity'
  | 'token_missing'
  | 'token_malformed'
  | 'token_bad_signature'
  | 'token_bad_algorithm'
  | 'token_wrong_audience'
  | 'token_expired'
  | 'token_lifetime_exceeded'
  | 'token_channel_mismatch'
  | 'token_project_mismatch'
  | 'token_key_revoked'
  | 'token_key_expired'
  | 'token_key_scope'
  | 'not_presence_channel'
  | 'invalid_user_id'
  | 'presence_info_too_large'
  | 'presence_user_missing'
  | 'presence_full'
  | 'unavailable'
  | 'internal';

/** Codes of errors raised by the client itself. */
export type ClientErrorCode =
  /** No answer in time: connection attempt, acknowledgement, or `authorize`. */
  | 'timeout'
  /** The client is closed. */
  | 'closed'
  /** The WebSocket could not be opened, or it broke. */
  | 'transport'
  /** `authorize` threw, rejected, or resolved to no token (`cause` holds its error). */
  | 'authorize_failed'
  /** The server sent something this client does not understand. */
  | 'protocol'
  /** A bad URL or option. */
  | 'invalid_options';

/** Every rejection and every error the client reports. */
export interface HeraldError extends Error {
  name: 'HeraldError';
  /** The server's code when Herald refused (`err.code === 'token_expired'`), else the client's. */
  code: ServerErrorCode | ClientErrorCode;
  cause?: unknown;
}

/** A token for a private channel: the string, or what `POST /v1/publishers/sign` answers. */
export type ChannelToken = string | { token: string; expiresAt?: string };

/**
 * A WebSocket class: the browser's, Node 22+'s global one, or `WebSocket` of the `ws` package
 * (Node 20). The client calls `new WebSocket(url)` and uses `send`, `close`, `onmessage` and
 * `onclose` as the browser defines them.
 */
export type WebSocketConstructor = new (url: string) => object;

export interface HeraldClientOptions {
  /** The project whose channels this client listens to (handshake `auth.projectId`). */
  projectId: string;
  /**
   * The WebSocket class to connect with. Default: `globalThis.WebSocket`. Node 20 has none:
   * pass `WebSocket` of the `ws` package, or the constructor throws a {@link HeraldError}
   * (`invalid_options`) saying so.
   */
  WebSocket?: WebSocketConstructor;
  /**
   * Fetches a token for a private channel (`private-…`), typically from your backend, which
   * calls `POST /v1/publishers/sign`. Called on `listen` and again on every reconnection.
   */
  authorize?: (channelName: string) => ChannelToken | Promise<ChannelToken>;
  /** First reconnection delay (doubling, jittered). Default 500. */
  reconnectDelayMs?: number;
  /** Longest reconnection delay. Default 30000. */
  reconnectDelayMaxMs?: number;
  /** Consecutive failed attempts after which the client closes. Default: unlimited. */
  maxReconnectAttempts?: number;
  /** Timeout of one connection attempt. Default 10000. */
  connectTimeoutMs?: number;
  /** Timeout of `listen`/`remove` (and of each `authorize` call). Default 10000. */
  requestTimeoutMs?: number;
}

/**
 * An event published to a channel (server `event`). `P` is the payload's type as you declare
 * it (`client.on<Order>('event', …)`); the client does not check the JSON against it.
 */
export interface ChannelEvent<P = unknown> {
  /** The id the publish call answered with (absent on client-to-client events). */
  id?: string;
  channelName: string;
  /** The publisher's JSON. */
  payload: P;
  /**
   * The event's position in its channel (1, 2, …), when the project keeps history (the
   * default; docs/PROTOCOL.md § History and recovery).
   */
  offset?: number;
  /** The epoch `offset` belongs to: it changes when the channel's history was lost. */
  epoch?: string;
}

export type SystemMessageCode = 'Success' | 'Error' | 'RemovedFromChannel';

/** A notice from the server (server `system_message`). */
export interface SystemMessage {
  code: SystemMessageCode;
  message: string;
  data?: {
    /** `Success` / `Error`: the channel concerned. */
    channelName?: string;
    /** `Error`: the refusal's code. */
    errorCode?: ServerErrorCode;
    /** `RemovedFromChannel`: the channels lost (they leave `client.channels`). */
    channels?: string[];
    [key: string]: unknown;
  };
}

/** `idle` only before `connect()`. */
export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

/** The second argument of a `state` listener. */
export interface StateDetail {
  /** `reconnecting`: 1 for the first attempt after a loss. */
  attempt?: number;
  /** `reconnecting`: how long until that attempt. */
  delayMs?: number;
  /** `reconnecting`: why the connection (or the last attempt) failed; `closed`: why it gave up. */
  error?: HeraldError;
}

/** After a reconnection, a channel could not be listened to again; it left `client.channels`. */
export interface RelistenFailure {
  channelName: string;
  error: HeraldError;
}

/**
 * Why a channel's events were not all delivered: the server no longer holds some
 * (`history_expired`), the channel's history was lost, e.g. the server restarted
 * (`epoch_changed`), the project keeps no history (`history_disabled`), or a gap in the
 * offsets was seen live (`offset_gap`).
 */
export type RecoveryReason = 'history_expired' | 'epoch_changed' | 'history_disabled' | 'offset_gap';

/**
 * Whether a channel's events are whole (`recovery` listener): after each reconnection, one per
 * re-listened channel (before the `connected` state), and when a gap in its offsets was seen.
 * The client remembers each channel's last offset and epoch and re-listens with them, so the
 * events published while it was away arrive first, as `event`s: `recovered: true`.
 * `recovered: false`: some were not delivered; re-sync that channel's state another way.
 */
export interface Recovery {
  channelName: string;
  recovered: boolean;
  /** Why not, when not. */
  reason?: RecoveryReason;
}

/**
 * A member of a presence channel (`presence-…`): a user, however many clients it has; `info`
 * is what the backend put in its token (`userInfo`), `null` without.
 */
export interface Member<I = Record<string, unknown>> {
  userId: string;
  info: I | null;
}

/**
 * A member joined (`member_added`: the user's first client) or left (`member_removed`: its
 * last) a presence channel. Applied in the order of the channel's presence version: a stale
 * event is dropped, and after a missed one the client re-syncs by itself (`presence_synced`).
 */
export interface PresenceChange {
  channelName: string;
  action: 'member_added' | 'member_removed';
  member: Member;
}

/**
 * A presence channel's whole member list, this client's own member included: from the
 * server's answer to `listen`, after every reconnection (joins and leaves while the client was
 * away are never replayed), and after a re-sync. Replace what you show with it.
 */
export interface PresenceSynced {
  channelName: string;
  members: Member[];
}

export interface HeraldClientEvents {
  event: (event: ChannelEvent) => void;
  system_message: (message: SystemMessage) => void;
  state: (state: Exclude<ConnectionState, 'idle'>, detail: StateDetail | undefined) => void;
  recovery: (recovery: Recovery) => void;
  relisten_failed: (failure: RelistenFailure) => void;
  presence: (change: PresenceChange) => void;
  presence_synced: (synced: PresenceSynced) => void;
}

export declare class HeraldClient {
  /**
   * @param url the server's base URL, e.g. `https://herald.example.com` (relative URLs resolve
   *   against the page; in Node it must be absolute)
   * @throws {HeraldError} `invalid_options` when there is no WebSocket class (Node 20 without
   *   `options.WebSocket`) or the URL is invalid; a `TypeError` for a missing `projectId`.
   */
  constructor(url: string | URL, options: HeraldClientOptions);
  /** The server's base URL, absolute. */
  readonly url: string;
  readonly state: ConnectionState;
  /** The channels listened to (re-listened after a reconnection), sorted. */
  readonly channels: string[];
  /** Connects (one attempt; reconnection starts once connected). */
  connect(): Promise<void>;
  /**
   * Listens to a channel. Rejects with a {@link HeraldError}: `invalid_channel_name` /
   * `ambiguous_channel_name` (checked before anything is sent), the server's refusal
   * (`token_expired`, …), `token_missing` for a private channel without `authorize`.
   */
  listen(channelName: string): Promise<void>;
  /** Stops listening to a channel (idempotent). */
  remove(channelName: string): Promise<void>;
  /**
   * The members of a presence channel this client listens to, ordered by user id (its own
   * included; empty for any other channel). Up to date when `presence` / `presence_synced`
   * listeners run; a fresh array each call.
   */
  members(channelName: string): Member[];
  /**
   * Adds an `event` listener whose payloads you type: `client.on<Order>('event', (e) => …)` or
   * `client.on('event', (e: ChannelEvent<Order>) => …)`. Returns a function that removes it.
   */
  on<P = unknown>(event: 'event', listener: (event: ChannelEvent<P>) => void): () => void;
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof HeraldClientEvents>(event: K, listener: HeraldClientEvents[K]): () => void;
  /** Removes a listener added with `on`. */
  off<P = unknown>(event: 'event', listener: (event: ChannelEvent<P>) => void): void;
  off<K extends keyof HeraldClientEvents>(event: K, listener: HeraldClientEvents[K]): void;
  /** Closes the connection for good. */
  close(): Promise<void>;
}

/** Checks a channel name with Herald's rules, without connecting. */
export declare function parseChannelName(name: string): Promise<{ name: string; private: boolean }>;

/**
 * Loads the WebAssembly module (the client does it on first use). Pass the module, or its URL
 * when `herald_wasm_bg.wasm` is not served next to `index.js`. In Node the package reads its
 * own `herald_wasm_bg.wasm` from disk (no fetch); a path or `file:` URL passed here is read too.
 */
export declare function initHerald(
  moduleOrPath?: WebAssembly.Module | BufferSource | URL | string | Response | Promise<Response>,
): Promise<void>;
