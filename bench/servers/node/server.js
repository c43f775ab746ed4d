// Socket.IO 4.8 with @socket.io/redis-streams-adapter and connection state recovery: the seed's
// stack, as a system under test of `python -m bench`.
//
// Clients connect with ?user=U&tenant=T and join rooms `user:U` and `tenant:T` (our service's
// automatic channels). Publishing is Redis-driven, like our service's worker path: a backend
// XADDs `room R data <json>` to PUB_STREAM; every server process reads it in one consumer group
// (XREADGROUP), emits `event` to room R (the adapter appends it to its Redis stream, which gives
// the recovery offset and reaches the other processes), then XACKs and XDELs the entry.
"use strict";

const http = require("http");
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-streams-adapter");

const PORT = Number(process.env.PORT || 3000);
const HOST = process.env.HOST || "127.0.0.1";
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379/0";
const STREAM = process.env.SIO_STREAM || "bench-sio";
const PUB_STREAM = process.env.PUB_STREAM || "bench-sio:pub";
const MAXLEN = Number(process.env.SIO_MAXLEN || 10000);
const RECOVERY_MS = Number(process.env.SIO_RECOVERY_MS || 120000);
const GROUP = "bench";

async function main() {
  const redis = createClient({ url: REDIS_URL });
  redis.on("error", (err) => console.error("redis:", err.message));
  await redis.connect();

  const httpServer = http.createServer((req, res) => {
    res.writeHead(req.url === "/healthz" ? 200 : 404, { "Content-Type": "text/plain" });
    res.end(req.url === "/healthz" ? "ok" : "not found");
  });
  const io = new Server(httpServer, {
    adapter: createAdapter(redis, { streamName: STREAM, maxLen: MAXLEN, sessionKeyPrefix: `${STREAM}:session:` }),
    connectionStateRecovery: { maxDisconnectionDuration: RECOVERY_MS, skipMiddlewares: true },
    serveClient: false,
    perMessageDeflate: false,
  });
  io.on("connection", (socket) => {
    if (!socket.recovered) {
      const q = socket.handshake.query;
      const rooms = [`user:${q.user}`, `tenant:${q.tenant}`];
      // the scale scenario: the tab's repository / analysis / job rooms (?rooms=a,b), the
      // Socket.IO counterpart of our service's channels= (a session that was recovered has them)
      if (typeof q.rooms === "string" && q.rooms) rooms.push(...q.rooms.split(","));
      socket.join(rooms);
    }
    // presence churn: the tab moves to another repository (acknowledged, so the generator knows
    // from when the room's events are due)
    socket.on("join", (room, ack) => {
      socket.join(String(room));
      if (typeof ack === "function") ack();
    });
    socket.on("leave", (room, ack) => {
      socket.leave(String(room));
      if (typeof ack === "function") ack();
    });
  });

  try {
    await redis.xGroupCreate(PUB_STREAM, GROUP, "0", { MKSTREAM: true });
  } catch (err) {
    if (!String(err.message).includes("BUSYGROUP")) throw err;
  }
  const reader = redis.duplicate();
  reader.on("error", (err) => console.error("redis reader:", err.message));
  await reader.connect();
  const consumer = `node-${process.pid}`;
  let running = true;
  (async function consume() {
    while (running) {
      let res;
      try {
        res = await reader.xReadGroup(GROUP, consumer, { key: PUB_STREAM, id: ">" }, { COUNT: 100, BLOCK: 1000 });
      } catch (err) {
        if (!running) return;
        console.error("consume:", err.message);
        await new Promise((r) => setTimeout(r, 200));
        continue;
      }
      if (!res) continue;
      for (const stream of res) {
        const ids = [];
        for (const entry of stream.messages) {
          io.to(entry.message.room).emit("event", JSON.parse(entry.message.data));
          ids.push(entry.id);
        }
        if (ids.length) {
          redis.xAck(PUB_STREAM, GROUP, ids).catch(() => {});
          redis.xDel(PUB_STREAM, ids).catch(() => {});
        }
      }
    }
  })();

  httpServer.listen(PORT, HOST, () => console.log(`socket.io listening on ${HOST}:${PORT}`));
  const stop = () => {
    running = false;
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
