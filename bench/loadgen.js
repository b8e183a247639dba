// The benchmark's load generator: Node with the `ws` package, pinned by
// bench/run.py to the core the server is not on.
//
//   node loadgen.js '{"url": "ws://127.0.0.1:PORT", "dialect": "native",
//                     "scenario": "relay", ...}'
//
// Talks to bench/run.py over stdio: a line {"mark": NAME} on stdout means
// "read the server's /proc figures now"; the generator then waits for one
// line on stdin before going on. The last stdout line is {"result": {...}}.
// Every scenario is bounded in time and in count, and every socket is closed
// before the process exits.
"use strict";

const WebSocket = require("ws");
const net = require("net");
const readline = require("readline");
const { performance } = require("perf_hooks");

const options = Object.assign(
  {
    dialect: "native",
    scenario: "relay",
    pairs: 50,
    window: 1,
    warmup: 1,
    duration: 5,
    rate: 10000,
    rooms: 50,
    room_size: 8,
    connections: 1000,
    concurrency: 100,
    cycles: 1000,
    settle_cycles: 200,
    payload_size: 1024,
    sources: 16,
    jitter_ms: 2000,
    // connections: "ws" (the npm client, as browsers' libraries behave) or
    // "quick" (QuickPeer: a bare-socket client at a fifth of the cost, so
    // that the generator is not what sets the pace).
    client: "ws",
    timeout: 120,
  },
  JSON.parse(process.argv[2] || "{}")
);

const deadline = setTimeout(() => {
  emit({ error: `scenario did not finish within ${options.timeout} s` });
  process.exit(2);
}, options.timeout * 1000);
deadline.unref();

function emit(object) {
  process.stdout.write(JSON.stringify(object) + "\n");
}

// stdin acknowledgements for marks
const acks = [];
const waiting = [];
readline.createInterface({ input: process.stdin }).on("line", () => {
  const resolve = waiting.shift();
  if (resolve) resolve();
  else acks.push(true);
});

function mark(name, extra) {
  emit(Object.assign({ mark: name }, extra || {}));
  if (acks.length) {
    acks.shift();
    return Promise.resolve();
  }
  return new Promise((resolve) => waiting.push(resolve));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// An SDP-like text of about payload_size bytes.
const SDP = (() => {
  const lines = [
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=msid-semantic: WMS stream",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 103 104 9 0 8 106 105 13 110 112 113 126",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:8hhY",
    "a=ice-pwd:asd88fgpdd777uzjYhagZg",
    "a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24:2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F",
    "a=setup:actpass",
    "a=mid:0",
    "a=sendrecv",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 minptime=10;useinbandfec=1",
  ];
  let text = "";
  let i = 0;
  while (text.length < options.payload_size) text += lines[i++ % lines.length] + "\r\n";
  return text.slice(0, options.payload_size);
})();

const SDP_JSON = JSON.stringify(SDP);
const T_MARK = Buffer.from('{"t":');

// ---------------------------------------------------------------- dialects
//
// A peer: connect(room) resolves once the peer is in `room` and knows its
// id; send(to, kind, payload); onSignal(kind, from, payload) is called per
// relayed message; leave() resolves when the server confirmed the leave.

let sourceIndex = 0;
function localAddress() {
  // Spread client sockets over 127.0.0.2.. so one address's ephemeral ports
  // are not the limit.
  const n = 2 + (sourceIndex++ % options.sources);
  return `127.0.0.${n}`;
}

let peerjsCounter = 0;
let ywebrtcCounter = 0;

class Peer {
  // base: the server's URL; the cross-node scenario puts each pair's
  // second end on another node (options.url_b).
  constructor(dialect, base) {
    this.dialect = dialect;
    this.base = base || options.url;
    this.id = null;
    this.onSignal = null;
    this.onTimestamp = null;
    this.waiter = null;
    this.closed = null;
    // y-webrtc: every publish comes back to its sender too; this mark in
    // the payload tells those echoes apart.
    this.echoMark = null;
  }

  // The URL to open for `room` (and this peer's id, where the client
  // chooses it).
  url(room) {
    const d = this.dialect;
    // options.query: "?token=..." when the server runs with --auth required.
    if (d === "native") return `${this.base}/signal${options.query || ""}`;
    if (d === "topic") return `${this.base}/ws/${encodeURIComponent(room)}${options.query || ""}`;
    if (d === "peerjs") {
      this.id = `bench${process.pid}x${peerjsCounter++}`;
      return `${options.url}/peerjs?key=peerjs&id=${this.id}&token=t${this.id}`;
    }
    if (d === "ywebrtc") {
      this.id = `y${process.pid}x${ywebrtcCounter++}`;
      this.echoMark = Buffer.from(`"f":"${this.id}"`);
      return `${this.base}${options.query || ""}`;
    }
    throw new Error(`unknown dialect ${d}`);
  }

  connect(room) {
    const d = this.dialect;
    this.room = room;
    const url = this.url(room);
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { localAddress: localAddress(), perMessageDeflate: false, skipUTF8Validation: true });
      this.ws = ws;
      this.closed = new Promise((done) => ws.on("close", done));
      ws.on("error", (error) => reject(error));
      ws.on("unexpected-response", (_, response) => reject(new Error(`HTTP ${response.statusCode}`)));
      ws.on("message", (data) => {
        if (this.echoMark !== null && data.indexOf(this.echoMark) >= 0) return;
        if (this.onTimestamp !== null) {
          // The relay scenarios' fast path: a relayed payload starts with
          // {"t":, so only the number after it is read, not the whole frame.
          const at = data.indexOf(T_MARK);
          if (at >= 0) {
            this.onTimestamp(parseFloat(data.toString("latin1", at + T_MARK.length, at + T_MARK.length + 32)));
            return;
          }
        }
        this.received(JSON.parse(data));
      });
      if (d === "ywebrtc") {
        ws.on("open", () => {
          ws.send(JSON.stringify({ type: "subscribe", topics: [room] }));
          ws.send(JSON.stringify({ type: "ping" }));
        });
      }
      this.waiter = (message) => {
        if (d === "native" && message.type === "welcome") {
          this.id = message.peerId;
          ws.send(JSON.stringify({ type: "join", room }));
        } else if (d === "native" && message.type === "joined") {
          this.waiter = null;
          resolve(this);
        } else if (d === "topic" && message.type === "welcome") {
          this.id = message.selfId;
        } else if (d === "topic" && message.type === "peer-list") {
          this.waiter = null;
          resolve(this);
        } else if (d === "peerjs" && message.type === "OPEN") {
          this.waiter = null;
          resolve(this);
        } else if (d === "ywebrtc" && message.type === "pong") {
          // Subscribed: the server answers in order.
          this.waiter = null;
          resolve(this);
        } else if (message.type === "error" || message.type === "ERROR") {
          reject(new Error(JSON.stringify(message)));
        }
      };
    });
  }

  received(message) {
    const type = message.type;
    if (this.waiter !== null) {
      this.waiter(message);
      return;
    }
    if (type === "offer" || type === "answer" || type === "ice-candidate" || type === "candidate") {
      if (this.onSignal) this.onSignal(type, message.from, message.payload);
    } else if (type === "OFFER" || type === "ANSWER") {
      if (this.onSignal) this.onSignal(type.toLowerCase(), message.src, message.payload);
    } else if (type === "error") {
      emit({ warning: "server error", message });
    }
  }

  send(to, kind, room, payload) {
    let body;
    if (this.dialect === "native") body = { type: kind, room, to, payload };
    else if (this.dialect === "topic") body = { type: kind, to, payload, msgId: "m" };
    else if (this.dialect === "ywebrtc") body = { type: "publish", topic: room, data: { ...payload, f: this.id } };
    else body = { type: kind.toUpperCase(), dst: to, payload };
    this.ws.send(JSON.stringify(body));
  }

  // The frame that sends a payload {"t": T, "sdp": SDP} to `to`, as the
  // two strings around T, so that sending it is one concatenation.
  template(to, kind, room) {
    const tail = `,"sdp":${SDP_JSON}}`;
    if (this.dialect === "native") {
      return [`{"type":"${kind}","room":${JSON.stringify(room)},"to":"${to}","payload":{"t":`, `${tail}}`];
    }
    if (this.dialect === "topic") {
      return [`{"type":"${kind}","to":"${to}","payload":{"t":`, `${tail},"msgId":"m"}`];
    }
    if (this.dialect === "ywebrtc") {
      // A broadcast to the topic (the pair's two ends), marked as ours.
      return [`{"type":"publish","topic":${JSON.stringify(room)},"data":{"t":`, `,"f":"${this.id}"${tail}}`];
    }
    return [`{"type":"${kind.toUpperCase()}","dst":"${to}","payload":{"t":`, `${tail}}`];
  }

  sendTemplate(template, t) {
    this.ws.send(template[0] + t + template[1]);
  }

  leave(room) {
    if (this.dialect !== "native") return Promise.resolve();
    return new Promise((resolve) => {
      this.waiter = (message) => {
        if (message.type === "left") {
          this.waiter = null;
          resolve();
        }
      };
      this.ws.send(JSON.stringify({ type: "leave", room }));
    });
  }

  close() {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.close();
    }
    return this.closed;
  }
}

// A peer that only joins and stays, for the storm's reconnections: a
// WebSocket client on a bare TCP socket (a fixed key, frames masked with a
// zero key, the 101 and the frames read by hand), about a fifth of what the
// `ws` client costs per connection. With 19,000 clients reconnecting within
// two seconds, the `ws` client kept this process's core busy, and its own
// stalls (a batch of timers opening hundreds of sockets at once) showed up
// as stretches with no completed join for every server alike.
class QuickPeer {
  constructor(dialect) {
    this.dialect = dialect;
    this.closed = null;
  }

  connect(room) {
    const d = this.dialect;
    const url = new URL(Peer.prototype.url.call({ dialect: d, base: options.url }, room));
    // What a client sends once the 101 is in: native joins, y-webrtc
    // subscribes and pings.
    const after = [];
    if (d === "ywebrtc") after.push({ type: "subscribe", topics: [room] }, { type: "ping" });
    const done = { native: "joined", topic: "peer-list", peerjs: "OPEN", ywebrtc: "pong" }[d];
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: url.hostname, port: Number(url.port), localAddress: localAddress() });
      this.socket = socket;
      this.closed = new Promise((closed) => socket.on("close", closed));
      let buffer = Buffer.alloc(0);
      let opened = false;
      let settled = false;
      const fail = (error) => {
        if (settled) return;
        settled = true;
        socket.destroy();
        reject(error);
      };
      socket.setNoDelay(true);
      socket.on("error", fail);
      socket.on("close", () => fail(new Error("closed before joining")));
      socket.on("connect", () => {
        socket.write(
          `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\nUpgrade: websocket\r\n` +
            "Connection: Upgrade\r\nSec-WebSocket-Key: c2lnbmFsaW5nYmVuY2gxMg==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
      });
      socket.on("data", (data) => {
        if (settled) return;
        buffer = buffer.length ? Buffer.concat([buffer, data]) : data;
        if (!opened) {
          const end = buffer.indexOf("\r\n\r\n");
          if (end < 0) return;
          const status = buffer.toString("latin1", 0, buffer.indexOf("\r\n"));
          if (!/^HTTP\/1\.1 101 /.test(status)) return fail(new Error(status));
          opened = true;
          buffer = buffer.subarray(end + 4);
          for (const message of after) socket.write(maskedText(JSON.stringify(message)));
        }
        // Server frames: unmasked, text, under 64 KB here.
        while (buffer.length >= 2) {
          let length = buffer[1] & 0x7f;
          let start = 2;
          if (length === 126) {
            if (buffer.length < 4) return;
            length = buffer.readUInt16BE(2);
            start = 4;
          } else if (length === 127) return fail(new Error("frame too large"));
          if (buffer.length < start + length) return;
          const opcode = buffer[0] & 0x0f;
          const payload = buffer.subarray(start, start + length);
          buffer = buffer.subarray(start + length);
          if (opcode === 8) return fail(new Error(`closed: ${payload.length >= 2 ? payload.readUInt16BE(0) : ""}`));
          if (opcode !== 1) continue;
          const message = JSON.parse(payload);
          if (message.type === "error" || message.type === "ERROR") return fail(new Error(JSON.stringify(message)));
          if (d === "native" && message.type === "welcome") socket.write(maskedText(JSON.stringify({ type: "join", room })));
          if (message.type === done) {
            settled = true;
            return resolve(this);
          }
        }
      });
    });
  }

  close() {
    // A close frame (1000), then the end of the stream.
    this.socket.end(Buffer.from([0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8]));
    return this.closed;
  }
}

// A client's text frame: masked, with a zero key (the payload as it is).
function maskedText(text) {
  const payload = Buffer.from(text);
  const header = payload.length < 126 ? Buffer.from([0x81, 0x80 | payload.length, 0, 0, 0, 0]) : Buffer.from([0x81, 0xfe, payload.length >> 8, payload.length & 0xff, 0, 0, 0, 0]);
  return Buffer.concat([header, payload]);
}

// ---------------------------------------------------------------- helpers

function percentiles(values) {
  if (!values.length) return { p50: null, p90: null, p99: null, max: null };
  const sorted = Float64Array.from(values).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  const round = (x) => Math.round(x * 1000) / 1000;
  return { p50: round(at(0.5)), p90: round(at(0.9)), p99: round(at(0.99)), max: round(sorted[sorted.length - 1]) };
}

async function inBatches(count, concurrency, work) {
  let next = 0;
  async function worker() {
    while (next < count) {
      const i = next++;
      await work(i);
    }
  }
  const workers = [];
  for (let w = 0; w < Math.min(concurrency, count); w++) workers.push(worker());
  await Promise.all(workers);
}

async function makePairs(prefix) {
  const pairs = [];
  await inBatches(options.pairs, 20, async (i) => {
    const room = `${prefix}-${process.pid}-${i}`;
    const a = await new Peer(options.dialect).connect(room);
    const b = await new Peer(options.dialect, options.url_b).connect(room);
    pairs.push({ a, b, room });
  });
  // Across nodes a join reaches the other node one pub/sub hop later.
  if (options.url_b) await sleep(300);
  return pairs;
}

async function closeAll(peers) {
  await Promise.all(peers.map((p) => p.close()));
}

// ---------------------------------------------------------------- scenarios

async function relay() {
  const pairs = await makePairs("relay");
  let measuring = false;
  let count = 0;
  let stopped = false;
  const latencies = [];
  for (const { a, b, room } of pairs) {
    const bounce = (self, template) => (t) => {
      const now = performance.now();
      if (measuring) {
        count++;
        latencies.push(now - t);
      }
      if (!stopped) self.sendTemplate(template, performance.now());
    };
    a.onTimestamp = bounce(a, a.template(b.id, "offer", room));
    b.onTimestamp = bounce(b, b.template(a.id, "answer", room));
  }
  for (const { a, b, room } of pairs) {
    const template = a.template(b.id, "offer", room);
    for (let w = 0; w < options.window; w++) a.sendTemplate(template, performance.now());
  }
  await sleep(options.warmup * 1000);
  await mark("start");
  measuring = true;
  const started = performance.now();
  await sleep(options.duration * 1000);
  measuring = false;
  const elapsed = (performance.now() - started) / 1000;
  const measured = count;
  await mark("end", { messages: measured });
  stopped = true;
  await sleep(200);
  await closeAll(pairs.flatMap((p) => [p.a, p.b]));
  return Object.assign(
    { pairs: options.pairs, window: options.window, seconds: round3(elapsed), messages: measured, msg_per_s: Math.round(measured / elapsed) },
    { latency_ms: percentiles(latencies) }
  );
}

async function rate() {
  const pairs = await makePairs("rate");
  let received = 0;
  const latencies = [];
  for (const pair of pairs) {
    pair.b.onTimestamp = (t) => {
      received++;
      latencies.push(performance.now() - t);
    };
    pair.template = pair.a.template(pair.b.id, "offer", pair.room);
  }
  await mark("start");
  const started = performance.now();
  const end = started + options.duration * 1000;
  let sent = 0;
  let index = 0;
  await new Promise((resolve) => {
    function tick() {
      const now = performance.now();
      const due = Math.floor(((Math.min(now, end) - started) / 1000) * options.rate);
      while (sent < due) {
        const { a, template } = pairs[index++ % pairs.length];
        a.sendTemplate(template, performance.now());
        sent++;
      }
      if (now >= end) resolve();
      else setTimeout(tick, 1);
    }
    tick();
  });
  // Let what is in flight arrive, up to 2 s.
  const drainEnd = performance.now() + 2000;
  while (received < sent && performance.now() < drainEnd) await sleep(20);
  await mark("end", { messages: received });
  await closeAll(pairs.flatMap((p) => [p.a, p.b]));
  return {
    pairs: options.pairs,
    rate: options.rate,
    sent,
    delivered: received,
    delivered_fraction: round3(received / Math.max(sent, 1)),
    latency_ms: percentiles(latencies),
  };
}

async function mesh() {
  await mark("start");
  const started = performance.now();
  const rooms = [];
  let messages = 0;
  await inBatches(options.rooms, 20, async (r) => {
    const room = `mesh-${process.pid}-${r}`;
    const peers = await Promise.all(
      Array.from({ length: options.room_size }, () => new Peer(options.dialect).connect(room))
    );
    rooms.push(peers);
  });
  const joined = performance.now();
  await Promise.all(
    rooms.map((peers) => {
      const expected = (peers.length * (peers.length - 1)) / 2;
      let answered = 0;
      return new Promise((resolve) => {
        if (expected === 0) resolve();
        for (const peer of peers) {
          peer.onSignal = (kind, from, payload) => {
            messages++;
            if (kind === "offer") peer.send(from, "answer", peer.room, { t: performance.now(), sdp: SDP });
            else if (++answered === expected) resolve();
          };
        }
        for (let i = 0; i < peers.length; i++) {
          for (let j = i + 1; j < peers.length; j++) {
            peers[i].send(peers[j].id, "offer", peers[i].room, { t: performance.now(), sdp: SDP });
          }
        }
      });
    })
  );
  const done = performance.now();
  await mark("end", { messages });
  await closeAll(rooms.flat());
  return {
    rooms: options.rooms,
    room_size: options.room_size,
    messages,
    join_ms: round3(joined - started),
    signal_ms: round3(done - joined),
    total_ms: round3(done - started),
  };
}

async function connections() {
  const Client = options.client === "quick" ? QuickPeer : Peer;
  const peers = [];
  let last = null;
  let longest = 0;
  let failed = 0;
  let firstError = null;
  // Stretches over 50 ms: [seconds into the run, length in ms, peers joined].
  const gaps = [];
  // A few joins first, so one-off start-up work (first request through
  // the web framework, lazy imports) is not counted as a pause.
  const warm = [];
  await inBatches(20, 10, async (i) => warm.push(await new Peer(options.dialect).connect(`warm-${process.pid}-${i}`)));
  await closeAll(warm);
  await sleep(300);
  await mark("start");
  const started = performance.now();
  await inBatches(options.connections, options.concurrency, async (i) => {
    const room = `idle-${process.pid}-${Math.floor(i / options.room_size)}`;
    try {
      peers.push(await new Client(options.dialect).connect(room));
    } catch (error) {
      failed++;
      if (firstError === null) firstError = String(error && error.message);
      return;
    }
    const now = performance.now();
    if (last !== null) {
      const gap = now - last;
      if (gap > longest) longest = gap;
      if (gap > 50) gaps.push([round3((last - started) / 1000), round3(gap), peers.length]);
    }
    last = now;
  });
  const elapsed = (performance.now() - started) / 1000;
  await sleep(500);
  await mark("connected", { peers: peers.length });
  await closeAll(peers);
  return {
    connections: options.connections,
    joined: peers.length,
    failed,
    first_error: firstError,
    seconds: round3(elapsed),
    joins_per_s: Math.round(peers.length / elapsed),
    longest_gap_ms: round3(longest),
    gaps_over_50ms: gaps.length,
    worst_gaps: gaps.sort((a, b) => b[1] - a[1]).slice(0, 5),
  };
}

async function churn() {
  let failed = 0;
  async function cycle(i) {
    const room = `churn-${process.pid}-${i % 64}`;
    try {
      const peer = await new Peer(options.dialect).connect(room);
      await peer.leave(room);
      await peer.close();
    } catch (error) {
      failed++;
    }
  }
  await inBatches(options.settle_cycles, options.concurrency, cycle);
  await sleep(500);
  await mark("settled");
  const started = performance.now();
  await inBatches(options.cycles, options.concurrency, cycle);
  const elapsed = (performance.now() - started) / 1000;
  await sleep(500);
  await mark("done");
  return {
    cycles: options.cycles,
    settle_cycles: options.settle_cycles,
    failed,
    seconds: round3(elapsed),
    cycles_per_s: Math.round(options.cycles / elapsed),
  };
}

// Every peer connected and in its room, then every socket dropped at once
// (no close handshake), then every client reconnecting into the same room
// after a random delay of up to jitter_ms, as clients do after a restart or
// a network blip; a failed attempt is retried after up to a second more.
//
// The first connections are held by a child process (`hold` below), and the
// drop is that process killed: the kernel closes all its sockets at once, as
// when a network path or a load balancer goes away. Closing 19,000 sockets
// from this process instead (`terminate()` on each) kept its event loop busy
// for half a second or more after the drop, which was then counted as the
// server's stretch with no join, for every server alike.
async function storm() {
  const { fork } = require("child_process");
  const holder = fork(__filename, [JSON.stringify(Object.assign({}, options, { scenario: "hold", room_prefix: `storm-${process.pid}` }))], {
    stdio: ["ignore", "ignore", "inherit", "ipc"],
  });
  const exited = new Promise((resolve) => holder.once("exit", resolve));
  const rooms = await new Promise((resolve, reject) => {
    holder.once("message", (message) => resolve(message.rooms));
    holder.once("exit", (code) => reject(new Error(`the holder exited (${code}) before connecting`)));
  });
  const schedule = rooms.map((room) => ({ room, at: Math.random() * options.jitter_ms })).sort((a, b) => a.at - b.at);
  await sleep(500);
  await mark("connected", { peers: rooms.length });
  const dropping = performance.now();
  holder.kill("SIGKILL");
  await exited;
  // Every socket of the holder is closed once it has exited.
  const dropped = performance.now();
  const completions = [];
  let failed = 0;
  let retries = 0;
  let firstError = null;
  const back = [];
  async function reconnect(room) {
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        back.push(await new QuickPeer(options.dialect).connect(room));
        completions.push(performance.now());
        return;
      } catch (error) {
        retries++;
        if (firstError === null) firstError = String(error && error.message);
        await sleep(Math.random() * 1000);
      }
    }
    failed++;
  }
  // Every client's delay is drawn before the drop, and one timer starts
  // those that are due: 19,000 timers set after the drop kept this process
  // busy for the first 80 ms.
  const attempts = [];
  let next = 0;
  await new Promise((allStarted) => {
    function startDue() {
      const now = performance.now() - dropped;
      while (next < schedule.length && schedule[next].at <= now) attempts.push(reconnect(schedule[next++].room));
      if (next < schedule.length) setTimeout(startDue, schedule[next].at - now);
      else allStarted();
    }
    startDue();
  });
  await Promise.all(attempts);
  const recovered = performance.now();
  await mark("recovered", { peers: back.length });
  // The longest stretch without a completed join, from the drop on.
  let longest = 0;
  let last = dropped;
  const gaps = [];
  for (const at of completions) {
    const gap = at - last;
    if (gap > longest) longest = gap;
    if (gap > 50) gaps.push([round3((last - dropped) / 1000), round3(gap)]);
    last = at;
  }
  await closeAll(back);
  return {
    connections: options.connections,
    connected: rooms.length,
    rejoined: back.length,
    failed,
    retries,
    first_error: firstError,
    drop_ms: round3(dropped - dropping),
    recover_ms: round3(recovered - dropped),
    longest_gap_ms: round3(longest),
    gaps_over_50ms: gaps.length,
    worst_gaps: gaps.sort((a, b) => b[1] - a[1]).slice(0, 5),
  };
}

// The storm's first connections, in a child process: connects them, sends
// their rooms to the parent and waits to be killed (or for the parent to go).
async function hold() {
  process.on("disconnect", () => process.exit(0));
  const rooms = [];
  const held = [];
  await inBatches(options.connections, options.concurrency, async (i) => {
    const room = `${options.room_prefix}-${Math.floor(i / options.room_size)}`;
    try {
      held.push(await new Peer(options.dialect).connect(room));
      rooms.push(room);
    } catch (error) {
      // counted by the parent: connected < connections
    }
  });
  process.send({ rooms });
  await new Promise(() => {});
}

function round3(x) {
  return Math.round(x * 1000) / 1000;
}

const SCENARIOS = { relay, rate, mesh, connections, churn, storm, hold };

(async () => {
  const scenario = SCENARIOS[options.scenario];
  if (!scenario) throw new Error(`unknown scenario ${options.scenario}`);
  const result = await scenario();
  emit({ result });
  process.exit(0);
})().catch((error) => {
  emit({ error: String((error && error.stack) || error) });
  process.exit(1);
});
