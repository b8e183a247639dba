// The JavaScript client (signaling/static/signaling-client.js), fetched from
// the running server at /client/signaling-client.js and driven in Node with
// the npm `ws` package as its WebSocket (Node 20 has no global one).
//
//   node client-flows.mjs HTTP_URL FLOW
//
// FLOW is backoff (no server needed: a fake clock and a fake WebSocket),
// resume (two clients; a TCP proxy between one of them and the server cuts
// its connection; it comes back with the same id and the messages sent
// meanwhile, exactly once, and the other never sees it leave), heartbeat
// (the proxy goes silent instead: the client's pings go unanswered and it
// resumes on a new socket, taking its session over), or directory
// (register, discover, relay, re-register after the cut), or drain (this
// server drains; the client waits its reconnect hint and comes back to
// SECOND_WS_URL, where it joins its room again). Prints
// "ok FLOW" and exits 0, or prints why and exits 1.
import net from "node:net";
import WebSocket from "ws";

const [httpUrl, flow] = process.argv.slice(2);

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

function equal(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function loadClient() {
  const response = await fetch(`${httpUrl}/client/signaling-client.js`);
  check(response.status === 200, `client served (${response.status})`);
  equal(response.headers.get("content-type"), "text/javascript; charset=utf-8", "content type");
  equal(response.headers.get("cache-control"), "no-cache", "cache control");
  const etag = response.headers.get("etag");
  const again = await fetch(`${httpUrl}/client/signaling-client.js`, { headers: { "If-None-Match": etag } });
  equal(again.status, 304, "revalidation");
  const code = await response.text();
  return import(`data:text/javascript;base64,${Buffer.from(code).toString("base64")}`);
}

/** A TCP proxy to the server whose connections can be cut at once. */
function proxy(port) {
  const sockets = new Set();
  const pairs = [];
  const server = net.createServer((client) => {
    const upstream = net.connect(port, "127.0.0.1");
    for (const [a, b] of [[client, upstream], [upstream, client]]) {
      a.pipe(b);
      a.on("error", () => b.destroy());
      a.on("close", () => b.destroy());
      sockets.add(a);
      pairs.push([a, b]);
    }
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({
        port: server.address().port,
        freeze() {
          // The network goes silent: nothing more passes either way, and
          // neither end hears of it.
          for (const [a, b] of pairs.splice(0)) {
            a.unpipe(b);
            a.pause();
          }
          sockets.clear();
        },
        cut() {
          // A reset both ways, as when Wi-Fi goes: no close frame.
          for (const socket of sockets) socket.resetAndDestroy ? socket.resetAndDestroy() : socket.destroy();
          sockets.clear();
        },
        close() {
          server.close();
        },
      });
    });
  });
}

async function backoff(module) {
  const { SignalingClient, States, backoffDelay } = module;
  // A fake clock: timers run only when the test says.
  const timers = [];
  const clock = {
    setTimeout(fn, ms) {
      timers.push({ fn, ms });
      return timers.length;
    },
    clearTimeout() {},
  };
  // A WebSocket whose every connection fails at once.
  class Refused {
    constructor() {
      this.readyState = 0;
      queueMicrotask(() => this.onclose({ code: 1006, reason: "" }));
    }
  }
  const client = new SignalingClient("ws://nowhere/signal", {
    WebSocket: Refused,
    backoff: { base: 100, factor: 3, cap: 1000, maxTries: 5, jitter: 0.5 },
    random: () => 0.5,
    ...clock,
  });
  const states = [];
  client.on("state", (event) => states.push(event.state));
  let refused = null;
  client.connect().catch((error) => (refused = error.message));
  const delays = [];
  for (let attempt = 0; attempt < 6; attempt += 1) {
    await sleep(0);
    const timer = timers.shift();
    if (!timer) break;
    delays.push(timer.ms);
    timer.fn();
  }
  // min(cap, base * factor ** n) * (1 - jitter * random)
  equal(delays, [75, 225, 675, 750, 750], "delays");
  equal(client.state, States.CLOSED, "state after maxTries");
  equal(states, ["connecting", "reconnecting", "closed"], "states");
  await sleep(0);
  equal(refused, "gave up reconnecting", "connect() rejects");
  equal(backoffDelay(0, {}, () => 0), 500, "default base");
  equal(backoffDelay(20, {}, () => 0), 30000, "default cap");
  equal(backoffDelay(1, {}, () => 1), 500, "default factor and jitter");
}

async function resume(module, serverPort) {
  const { SignalingClient, States } = module;
  const cutter = await proxy(serverPort);
  const fast = { base: 50, factor: 2, cap: 200, jitter: 0 };
  const alice = new SignalingClient(`ws://127.0.0.1:${serverPort}/signal`, { WebSocket, backoff: fast });
  const bob = new SignalingClient(`ws://127.0.0.1:${cutter.port}/signal`, { WebSocket, backoff: fast, ackDelay: 20 });
  const aliceWelcome = await alice.connect();
  const bobWelcome = await bob.connect();
  equal(bob.state, States.OPEN, "bob open");
  await alice.join("js-room", { name: "alice" });
  const bobJoins = within(alice.once("peer-joined"), 2000, "alice sees bob");
  const joined = await bob.join("js-room", { name: "bob" });
  equal(joined.peers, [{ id: aliceWelcome.peerId, metadata: { name: "alice" } }], "bob sees alice");
  await bobJoins;
  equal([...alice.peers("js-room").keys()], [bobWelcome.peerId], "alice's peers");

  const aliceSaw = [];
  alice.on("peer-left", (event) => aliceSaw.push(event));
  const received = [];
  bob.on("message", (event) => received.push(event.payload));
  alice.send("js-room", "one", bobWelcome.peerId);
  await within(bob.once("message"), 2000, "first message");
  await sleep(60);

  const states = [];
  bob.on("state", (event) => states.push(event.state));
  const back = bob.once("welcome");
  cutter.cut();
  await sleep(20);
  alice.send("js-room", "two", bobWelcome.peerId);
  alice.send("js-room", "three");
  const welcome = await within(back, 3000, "resumed welcome");
  equal([welcome.resumed, welcome.peerId], [true, bobWelcome.peerId], "same session");
  await sleep(100);
  equal(received, ["one", "two", "three"], "messages, exactly once and in order");
  equal(states, ["reconnecting", "open"], "states through the cut");
  equal(aliceSaw, [], "alice saw no leave");
  bob.send("js-room", "bob is back", aliceWelcome.peerId);
  const reply = await within(alice.once("message"), 2000, "bob's message after resume");
  equal(reply.payload, "bob is back", "bob's message");

  const left = within(alice.once("peer-left"), 2000, "alice sees bob leave on close");
  bob.close();
  equal((await left).peer.id, bobWelcome.peerId, "who left");
  alice.close();
  cutter.close();
}

async function directory(module, serverPort) {
  const { DirectoryClient } = module;
  const cutter = await proxy(serverPort);
  const fast = { base: 50, factor: 2, cap: 200, jitter: 0 };
  const alice = new DirectoryClient(`ws://127.0.0.1:${cutter.port}/directory`, { WebSocket, backoff: fast });
  const bob = new DirectoryClient(`ws://127.0.0.1:${serverPort}/directory`, { WebSocket, backoff: fast });
  await alice.connect();
  await bob.connect();
  equal((await alice.register("alice@js", "alice-key")).success, true, "alice registered");
  await bob.register("bob@js", "bob-key");
  const found = await bob.discover("alice@js", { watch: true });
  equal([found.online, found.publicKey], [true, "alice-key"], "discover");
  bob.offer("alice@js", { type: "offer", sdp: "v=0" });
  const offer = await within(alice.once("offer"), 2000, "offer");
  equal([offer.from, offer.offer.sdp], ["bob@js", "v=0"], "relayed offer");

  const offline = within(bob.once("presence"), 3000, "presence offline");
  cutter.cut();
  equal((await offline).online, false, "alice offline");
  const online = await within(bob.once("presence"), 3000, "presence online again");
  equal(online.online, true, "alice registered again after reconnecting");
  alice.close();
  bob.close();
  cutter.close();
}

async function heartbeat(module, serverPort) {
  const { SignalingClient } = module;
  const cutter = await proxy(serverPort);
  const fast = { base: 50, factor: 2, cap: 200, jitter: 0 };
  const alice = new SignalingClient(`ws://127.0.0.1:${serverPort}/signal`, { WebSocket, backoff: fast, heartbeat: { interval: 0 } });
  const bob = new SignalingClient(`ws://127.0.0.1:${cutter.port}/signal`, {
    WebSocket,
    backoff: fast,
    heartbeat: { interval: 300, timeout: 200 },
  });
  await alice.connect();
  const bobWelcome = await bob.connect();
  await alice.join("silent-room", {});
  const bobJoins = within(alice.once("peer-joined"), 2000, "alice sees bob");
  await bob.join("silent-room", {});
  await bobJoins;
  await sleep(400);
  equal(bob.state, "open", "heartbeats answered");
  const left = [];
  alice.on("peer-left", (event) => left.push(event));
  const received = [];
  bob.on("message", (event) => received.push(event.payload));

  const back = bob.once("welcome");
  cutter.freeze();
  alice.send("silent-room", "while silent", bobWelcome.peerId);
  const welcome = await within(back, 3000, "resume after a silent socket");
  equal([welcome.resumed, welcome.peerId], [true, bobWelcome.peerId], "same session");
  await sleep(100);
  equal(received, ["while silent"], "the message, once");
  equal(left, [], "alice saw no leave");
  bob.close();
  alice.close();
  cutter.close();
}

async function auth(module, serverPort) {
  // The server runs with --auth required; TOKEN is a JWT for "alice".
  const { SignalingClient } = module;
  const cutter = await proxy(serverPort);
  let issued = 0;
  const alice = new SignalingClient(`ws://127.0.0.1:${cutter.port}/signal`, {
    WebSocket,
    backoff: { base: 50, jitter: 0 },
    token: () => {
      issued += 1;
      return process.env.TOKEN;
    },
  });
  const welcome = await alice.connect();
  equal(welcome.userId, "alice", "verified user");
  await alice.join("auth-room", {});
  const back = alice.once("welcome");
  cutter.cut();
  const resumed = await within(back, 3000, "resumed welcome");
  equal([resumed.resumed, resumed.peerId, resumed.userId], [true, welcome.peerId, "alice"], "same verified session");
  equal(issued, 2, "a token for each connection");
  equal((await alice.ping()).type, "pong", "requests work");
  alice.close();
  cutter.close();
}

async function drain(module, serverPort) {
  // SECOND_WS_URL is another server's /signal; DRAIN_PID this server's pid.
  const { SignalingClient, hintedDelay } = module;
  const first = `ws://127.0.0.1:${serverPort}/signal`;
  const second = process.env.SECOND_WS_URL;
  const quiet = { WebSocket, heartbeat: { interval: 0 } };
  const carol = new SignalingClient(second, quiet);
  await carol.connect();
  await carol.join("js-drain", { name: "carol" });
  const dave = new SignalingClient([first, second], { ...quiet, backoff: { jitter: 0.5 }, random: () => 0.5 });
  const welcome = await dave.connect();
  await dave.join("js-drain", { name: "dave" });
  equal(dave.url, first, "connected to the first");
  const told = within(dave.once("reconnect"), 5000, "reconnect message");
  const waiting = within(dave.once("reconnecting"), 5000, "reconnecting");
  const back = within(dave.once("welcome"), 5000, "welcome on the second");
  const rejoined = within(dave.once("rejoined"), 5000, "rejoined");
  const carolSees = within(carol.once("peer-joined"), 5000, "carol sees dave");
  process.kill(Number(process.env.DRAIN_PID), "SIGTERM");
  equal((await told).delayMs, 1000, "the hint");
  // The hint, 1 s, and half of the jitter's half.
  equal((await waiting).delay, 1250, "the wait before coming back");
  const again = await back;
  equal(dave.url, second, "came back to the second");
  equal(again.resumed, false, "a server that never had the session");
  check(again.peerId !== welcome.peerId, "a new peer id");
  await rejoined;
  const joined = await carolSees;
  equal([joined.peer.id, joined.peer.metadata], [again.peerId, { name: "dave" }], "carol sees dave arrive");
  equal(hintedDelay(10000, { cap: 2000, jitter: 0.5 }, () => 0.5), 2000, "the cap bounds a long hint");

  // A URL that refuses is passed over.
  const refusing = net.createServer();
  await new Promise((resolve) => refusing.listen(0, "127.0.0.1", resolve));
  const refused = `ws://127.0.0.1:${refusing.address().port}/signal`;
  await new Promise((resolve) => refusing.close(resolve));
  const eve = new SignalingClient([refused, second], { ...quiet, backoff: { base: 10, jitter: 0 } });
  await within(eve.connect(), 5000, "eve connects");
  equal(eve.url, second, "eve on the second");
  eve.close();
  dave.close();
  carol.close();
}

const flows = { backoff, resume, directory, heartbeat, auth, drain };

try {
  const module = await loadClient();
  const port = Number(new URL(httpUrl).port);
  await flows[flow](module, port);
  console.log(`ok ${flow}`);
  process.exit(0);
} catch (error) {
  console.log(`FAILED ${flow}: ${error.stack || error}`);
  process.exit(1);
}
