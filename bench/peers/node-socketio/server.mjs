// Benchmark peer (1): the seed's stack, Node socket.io 4.8 + @socket.io/redis-adapter, with
// Herald's contract as far as the benchmark uses it:
//   handshake auth {projectId}           -> joins room {projectId}
//   listen {channelName} (with ack)      -> joins {projectId}:{channelName}, acks {ok:true}
//   POST /v1/publishers/events/publish   -> emits event {id, channelName, payload} to the room
// Simplifications (documented in bench/README.md): no API keys; REST publishes reach the
// project given by PROJECT (default "bench"); no project store, private channels, limits or
// system_message. TCP_NODELAY on every accepted socket.
//
// Env: PORT (0 = any), REDIS_URL (unset: in-memory adapter), PROJECT.
// Prints "peer listening on http://127.0.0.1:PORT" once ready.
import http from "node:http";
import { randomUUID } from "node:crypto";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const port = Number(process.env.PORT || 0);
const project = process.env.PROJECT || "bench";
const redisUrl = process.env.REDIS_URL;
const PUBLISH = "/v1/publishers/events/publish";
let publishErrors = 0;

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

const httpServer = http.createServer({ noDelay: true, keepAliveTimeout: 60_000 });
httpServer.on("connection", (s) => s.setNoDelay(true));

const io = new Server(httpServer, { serveClient: false, cors: { origin: "*" } });

if (redisUrl) {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("redis pub:", e.message));
  sub.on("error", (e) => console.error("redis sub:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}

io.use((socket, next) => {
  const p = socket.handshake.auth && socket.handshake.auth.projectId;
  if (typeof p !== "string" || !/^[a-z0-9][a-z0-9-]{0,62}$/.test(p)) {
    return next(new Error("missing_project_id: auth.projectId is required"));
  }
  socket.data.projectId = p;
  next();
});

io.on("connection", (socket) => {
  const p = socket.data.projectId;
  socket.join(p);
  socket.on("listen", (body, ack) => {
    const channel = body && body.channelName;
    const ok = typeof channel === "string" && channel.length > 0 && !channel.includes(":");
    if (ok) socket.join(`${p}:${channel}`);
    if (typeof ack === "function") {
      ack(ok ? { ok: true } : { ok: false, code: "invalid_body", message: "channelName required" });
    }
  });
});

// socket.io handles /socket.io/ itself and leaves other requests to the listeners below.
httpServer.on("request", (req, res) => {
  if (req.url.startsWith("/socket.io/")) return;
  if (req.method === "GET" && req.url === "/stats") return send(res, 200, { publishErrors });
  if (req.method !== "POST" || req.url !== PUBLISH) return send(res, 404, { error: { code: "not_found" } });
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      return send(res, 400, { error: { code: "invalid_body" } });
    }
    const channelName = body && body.channelName;
    if (typeof channelName !== "string" || channelName.length === 0) {
      return send(res, 400, { error: { code: "invalid_body" } });
    }
    const id = randomUUID();
    io.to(`${project}:${channelName}`).emit("event", { id, channelName, payload: body.payload });
    send(res, 200, { id });
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`peer listening on http://127.0.0.1:${httpServer.address().port}`);
});

const stop = () => {
  io.close();
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
