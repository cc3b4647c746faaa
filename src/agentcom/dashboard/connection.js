// The page's two WebSocket connections to the hub, each reconnecting by itself:
// the event feed on /ws/dashboard and the request channel on /ws/operator.

/** Reconnect delays: the first retry, the doubling cap, and +/- jitter. */
export const BACKOFF = { initialMs: 500, maxMs: 15_000, jitter: 0.2 };

/** Requests not answered within this long fail (the hub answers in milliseconds). */
export const REQUEST_TIMEOUT_MS = 15_000;

/** Close codes: the page's own, and the hub's refusals (server/closecodes.py). */
const CLOSE_NORMAL = 1000;
const CLOSE_POLICY_VIOLATION = 1008; // with reason "invalid token": refused at once
const CLOSE_REVOKED = 4003; // the token was revoked while the page was open

/** The URL of a hub WebSocket path, on the host and scheme the page came from. */
export function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

/** Raised when the hub refuses the token: retrying with it cannot help. */
export class TokenRefused extends Error {
  /** @param {object} frame the hub's `invalid_token` error, whose `message` may say why */
  constructor(frame) {
    super(frame.error);
    this.hubMessage = frame.message || null;
  }
}

/**
 * A WebSocket that comes back after every drop, waiting longer after each failed attempt.
 *
 * Subclasses implement `greet(ws)` (the first frame), `receive(frame)` and may override
 * `connected()` / `disconnected()`. `status` listeners hear "connecting", "live",
 * "waiting" (with the delay in ms) and "refused" (with the hub's reason or null).
 */
class ReconnectingSocket {
  constructor(path, token) {
    this.path = path;
    this.token = token;
    this.ws = null;
    this.delayMs = BACKOFF.initialMs;
    this.retryTimer = null;
    this.stopped = true;
    this.listeners = new Set();
  }

  onStatus(listener) {
    this.listeners.add(listener);
  }

  emitStatus(status, detail) {
    for (const listener of this.listeners) listener(status, detail);
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close(CLOSE_NORMAL, "page closed");
    this.ws = null;
  }

  open() {
    this.emitStatus("connecting");
    const ws = new WebSocket(socketUrl(this.path));
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify(this.greet()));
    ws.onmessage = (message) => {
      if (ws !== this.ws) return;
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch {
        return; // the hub only sends JSON; anything else is not for us
      }
      try {
        this.receive(frame);
      } catch (error) {
        if (error instanceof TokenRefused) {
          this.refuse(error.hubMessage);
          return;
        }
        throw error;
      }
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.disconnected();
      if (this.stopped) return;
      const refused = event.code === CLOSE_POLICY_VIOLATION && /token/.test(event.reason);
      if (refused || event.code === CLOSE_REVOKED) {
        this.refuse();
        return;
      }
      this.scheduleRetry();
    };
  }

  /** The hub refused the token; `message` is its reason, when it gave one. */
  refuse(message) {
    this.stop();
    this.emitStatus("refused", message || null);
  }

  /** The handshake succeeded: the next drop starts again from the shortest delay. */
  established() {
    this.delayMs = BACKOFF.initialMs;
    this.emitStatus("live");
  }

  scheduleRetry() {
    const spread = 1 + BACKOFF.jitter * (2 * Math.random() - 1);
    const wait = Math.round(this.delayMs * spread);
    this.delayMs = Math.min(this.delayMs * 2, BACKOFF.maxMs);
    this.emitStatus("waiting", wait);
    this.retryTimer = setTimeout(() => {
      if (!this.stopped) this.open();
    }, wait);
  }

  disconnected() {}
}

/** The event feed: a snapshot after every (re)connect, then live events. */
export class DashboardFeed extends ReconnectingSocket {
  /**
   * @param {string} token admin or viewer token
   * @param {(frame: object) => void} onFrame receives the snapshot and every event
   */
  constructor(token, onFrame) {
    super("/ws/dashboard", token);
    this.onFrame = onFrame;
  }

  greet() {
    // batch: events arrive several to a frame, as {"type":"events","events":[...]}
    return { type: "subscribe", token: this.token, batch: true };
  }

  receive(frame) {
    if (frame.type === "error") {
      if (frame.error === "invalid_token") throw new TokenRefused(frame);
      return;
    }
    if (frame.type === "events") {
      for (const event of frame.events) this.onFrame(event);
      return;
    }
    if (frame.type === "snapshot") this.established();
    this.onFrame(frame);
  }
}

/** Requests and replies on /ws/operator, matched by request id. */
export class OperatorChannel extends ReconnectingSocket {
  constructor(token) {
    super("/ws/operator", token);
    this.role = null;
    this.nextId = 1;
    this.pending = new Map();
    this.readyListeners = new Set();
  }

  /** `listener(role)` runs after every successful authentication. */
  onReady(listener) {
    this.readyListeners.add(listener);
  }

  greet() {
    return { type: "auth", token: this.token };
  }

  get ready() {
    return this.role !== null && this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  receive(frame) {
    if (frame.type === "auth_ok") {
      this.role = frame.role;
      this.established();
      for (const listener of this.readyListeners) listener(frame.role);
      return;
    }
    if (frame.type === "error" && frame.request_id === null && frame.error === "invalid_token") {
      throw new TokenRefused(frame);
    }
    const waiter = this.pending.get(frame.request_id);
    if (!waiter) return;
    this.pending.delete(frame.request_id);
    clearTimeout(waiter.timer);
    if (frame.type === "result") waiter.resolve(frame.data);
    else waiter.reject(new RequestError(frame.error, frame.message));
  }

  disconnected() {
    this.role = null;
    for (const waiter of this.pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(new RequestError("disconnected", "the connection to the hub was lost"));
    }
    this.pending.clear();
  }

  /**
   * Send one request; resolves with its `data`, rejects with a RequestError.
   * @param {string} type e.g. "task_get"
   * @param {object} [fields] the request's other fields
   */
  request(type, fields = {}) {
    if (!this.ready) {
      return Promise.reject(new RequestError("disconnected", "not connected to the hub"));
    }
    const requestId = `r${this.nextId++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new RequestError("timeout", "the hub did not answer in time"));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(requestId, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ type, request_id: requestId, ...fields }));
    });
  }
}

/** A request the hub answered with an error (or that could not be sent). */
export class RequestError extends Error {
  constructor(code, message) {
    super(message ? `${code}: ${message}` : code);
    this.code = code;
  }
}
