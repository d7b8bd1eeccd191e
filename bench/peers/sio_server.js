// The socket.io peer of bench/closed_loop.py: one Node.js process of a cluster
// sharing rooms through @socket.io/redis-adapter, the setup socket.io documents
// for several servers.
//
//   node sio_server.js --redis redis://127.0.0.1:6379/0 --key PREFIX [--port 0]
//
// A client connects with ?user=NAME and joins the room NAME; an event
// ["chat_message", {to, ...}] is sent to every connection of user `to`, on any
// process, as ["chat_message", {...the same payload, from: <sender>}]: the
// chat example of wsnode, `io.to(user).emit`. No auth, no store, no ACKs: what
// the adapter gives. Prints "listening PORT" once it serves.
"use strict";

const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

async function main() {
  const pub = createClient({ url: option("redis", "redis://127.0.0.1:6379/0") });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const io = new Server({
    adapter: createAdapter(pub, sub, { key: option("key", "socket.io") }),
    // The load client speaks the websocket transport directly (no polling,
    // no upgrade), as production clients configured for websocket-only do.
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
  });
  io.on("connection", (socket) => {
    const user = String(socket.handshake.query.user || "");
    socket.join(user);
    socket.on("chat_message", (payload) => {
      if (payload && typeof payload.to === "string" && payload.to) {
        io.to(payload.to).emit("chat_message", { ...payload, from: user });
      }
    });
  });
  const http = require("http").createServer();
  io.attach(http);
  http.listen(Number(option("port", "0")), "127.0.0.1", () => {
    process.stdout.write(`listening ${http.address().port}\n`);
  });
  const stop = () => process.exit(0);
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  process.stderr.write(`${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
