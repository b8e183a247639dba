// Client code in the style of seeds 000 (rooms) and 002 (calls), run with
// the npm socket.io-client against a running server.
//
//   node flows.js URL MODE FLOW
//
// MODE is polling, websocket or upgrade (polling first, then the upgrade).
// FLOW is rooms, calls or calls-refused; tokens come from TOKEN_A, TOKEN_B,
// FORGED_TOKEN. KEYED=1 says the server has a JWT key, so that a user id a
// tokenless client claims is shown only as claimedUserId. Prints
// "ok FLOW MODE" and exits 0, or prints why and exits 1.
"use strict";
const { io } = require("socket.io-client");

const [url, mode, flow] = process.argv.slice(2);

function options(extra) {
  const base = { forceNew: true, reconnection: false, timeout: 5000 };
  if (mode === "polling") base.transports = ["polling"];
  if (mode === "websocket") base.transports = ["websocket"];
  return Object.assign(base, extra || {});
}

function next(socket, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within 5 s`)), 5000);
    socket.once(event, (data) => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

function equal(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

async function connected(socket) {
  if (!socket.connected) await next(socket, "connect");
  return socket;
}

async function upgraded(socket) {
  if (mode !== "upgrade") return;
  const engine = socket.io.engine;
  if (engine.transport.name !== "websocket") await next(engine, "upgrade");
  equal(engine.transport.name, "websocket", "transport after the upgrade");
}

const offer = { type: "offer", sdp: "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n" };
const answer = { type: "answer", sdp: "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\n" };
const candidate = { candidate: "candidate:1 1 udp 2122260223 10.0.0.1 54321 typ host", sdpMid: "0", sdpMLineIndex: 0 };

// How others see a tokenless client that said it was userId.
function claimed(userId) {
  return process.env.KEYED ? { userId: null, claimedUserId: userId } : { userId };
}

function relayedUserId(userId) {
  return process.env.KEYED ? null : userId;
}

async function rooms() {
  const roomId = "room-" + mode;
  const alice = await connected(io(url, options()));
  const bob = await connected(io(url, options()));

  const aliceUsers = next(alice, "room-users");
  alice.emit("join-room", { roomId, userId: "alice" });
  equal((await aliceUsers).users, [], "alice's room-users");

  const joined = next(alice, "user-joined");
  const bobUsers = next(bob, "room-users");
  bob.emit("join-room", { roomId, userId: "bob" });
  equal((await bobUsers).users, [{ socketId: alice.id, ...claimed("alice") }], "bob's room-users");
  equal(await joined, { roomId, socketId: bob.id, ...claimed("bob") }, "user-joined");

  // Bob calls everyone he found in room-users; Alice answers the sender.
  alice.on("offer", (data) => {
    alice.emit("answer", { roomId: data.roomId, targetId: data.senderId, answer });
  });
  const gotAnswer = next(bob, "answer");
  const gotOffer = next(alice, "offer");
  bob.emit("offer", { roomId, targetId: alice.id, offer });
  equal(await gotOffer, { roomId, senderId: bob.id, userId: relayedUserId("bob"), offer }, "relayed offer");
  equal(await gotAnswer, { roomId, senderId: alice.id, userId: relayedUserId("alice"), answer }, "relayed answer");

  const gotCandidate = next(bob, "ice-candidate");
  alice.emit("ice-candidate", { roomId, targetId: bob.id, candidate });
  equal((await gotCandidate).candidate, candidate, "relayed candidate");

  await upgraded(alice);
  await upgraded(bob);

  const left = next(alice, "user-left");
  bob.emit("leave-room", { roomId });
  equal(await left, { roomId, socketId: bob.id, ...claimed("bob") }, "user-left");

  const gone = next(alice, "user-left");
  bob.emit("join-room", { roomId, userId: "bob" });
  await next(bob, "room-users");
  const bobId = bob.id;
  bob.disconnect();
  equal((await gone).socketId, bobId, "user-left on disconnect");
  alice.disconnect();
}

async function calls() {
  const callRoomId = "call_123_" + mode;
  const caller = await connected(io(url, options({ auth: { token: process.env.TOKEN_A } })));
  const callee = await connected(io(url, options({ auth: { token: process.env.TOKEN_B } })));

  // The usage example of the 002 document, unchanged in substance.
  const rtcPeerConnection = {
    async setRemoteDescription(description) { this.remote = description; },
    async createAnswer() { return answer; },
  };
  callee.on("webrtc:offer", async (data) => {
    await rtcPeerConnection.setRemoteDescription(data.offer);
    const answer = await rtcPeerConnection.createAnswer();
    callee.emit("webrtc:answer", {
      callRoomId: data.callRoomId,
      targetSocketId: data.fromSocketId,
      answer: answer,
    });
  });

  const callerJoined = next(caller, "webrtc:room-joined");
  caller.emit("webrtc:join-room", { callRoomId, callType: "video", metadata: { groupId: "group_456" } });
  const first = await callerJoined;
  equal(first.participantCount, 1, "participantCount");
  equal(first.existingParticipants, [], "existingParticipants");
  equal(first.metadata.callType, "video", "callType");
  equal(first.metadata.createdBy, "user-a", "createdBy");
  equal(first.metadata.groupId, "group_456", "the creator's metadata");
  check(typeof first.metadata.createdAt === "string", "createdAt");

  const participantJoined = next(caller, "webrtc:participant-joined");
  const calleeJoined = next(callee, "webrtc:room-joined");
  callee.emit("webrtc:join-room", { callRoomId, callType: "video" });
  const second = await calleeJoined;
  equal(second.participantCount, 2, "participantCount");
  equal(second.existingParticipants.map((p) => [p.socketId, p.userId]), [[caller.id, "user-a"]], "existingParticipants");
  const notice = await participantJoined;
  equal([notice.callRoomId, notice.participant.socketId, notice.participant.userId], [callRoomId, callee.id, "user-b"], "participant-joined");

  const gotOffer = new Promise((resolve) => callee.once("webrtc:offer", resolve));
  const gotAnswer = next(caller, "webrtc:answer");
  caller.emit("webrtc:offer", { callRoomId, targetSocketId: callee.id, offer, sdpMid: "0", sdpMLineIndex: 0 });
  const relayedOffer = await gotOffer;
  equal([relayedOffer.fromSocketId, relayedOffer.fromUserId, relayedOffer.sdpMid, relayedOffer.sdpMLineIndex], [caller.id, "user-a", "0", 0], "relayed offer");
  const relayedAnswer = await gotAnswer;
  equal([relayedAnswer.callRoomId, relayedAnswer.fromSocketId, relayedAnswer.fromUserId, relayedAnswer.answer], [callRoomId, callee.id, "user-b", answer], "relayed answer");
  check(typeof relayedAnswer.timestamp === "string", "timestamp");

  // No targetSocketId: the candidate goes to the whole room.
  const broadcast = next(callee, "webrtc:ice-candidate");
  caller.emit("webrtc:ice-candidate", { callRoomId, candidate, sdpMid: "0", sdpMLineIndex: 0 });
  equal((await broadcast).candidate, candidate, "broadcast candidate");

  // Room isolation: a room the sender is not in.
  const refused = next(caller, "webrtc:signaling-error");
  caller.emit("webrtc:offer", { callRoomId: "elsewhere", targetSocketId: callee.id, offer });
  const error = await refused;
  check(typeof error.error === "string" && typeof error.timestamp === "string", "signaling-error");

  const joinError = next(caller, "webrtc:join-room-error");
  caller.emit("webrtc:join-room", { callType: "video" });
  check(typeof (await joinError).error === "string", "join-room-error");

  await upgraded(caller);
  await upgraded(callee);

  const participantLeft = next(caller, "webrtc:participant-left");
  const roomLeft = next(callee, "webrtc:room-left");
  callee.emit("webrtc:leave-room", { callRoomId });
  equal((await roomLeft).callRoomId, callRoomId, "room-left");
  equal((await participantLeft).participant.socketId, callee.id, "participant-left");
  caller.disconnect();
  callee.disconnect();
}

async function callsRefused() {
  // With a key configured: no token connects, but calls events are refused.
  const anonymous = await connected(io(url, options()));
  const joinError = next(anonymous, "webrtc:join-room-error");
  anonymous.emit("webrtc:join-room", { callRoomId: "call_x" });
  check(/auth/i.test((await joinError).error), "join-room-error names authentication");
  const signalingError = next(anonymous, "webrtc:signaling-error");
  anonymous.emit("webrtc:offer", { callRoomId: "call_x", targetSocketId: "nobody", offer });
  check(/auth/i.test((await signalingError).error), "signaling-error names authentication");
  // ...while the rooms events work.
  const users = next(anonymous, "room-users");
  anonymous.emit("join-room", { roomId: "open-room", userId: "guest" });
  equal((await users).users, [], "room-users");
  await upgraded(anonymous);
  anonymous.disconnect();

  // A forged token is refused at CONNECT.
  const forged = io(url, options({ auth: { token: process.env.FORGED_TOKEN } }));
  const failure = await next(forged, "connect_error");
  check(/auth/i.test(failure.message), "connect_error message: " + failure.message);
  check(!forged.connected, "the forged client is not connected");
  forged.close();
}

const flows = { rooms, calls, "calls-refused": callsRefused };

const deadline = setTimeout(() => {
  console.log(`timeout ${flow} ${mode}`);
  process.exit(1);
}, 20000);

flows[flow]()
  .then(() => {
    clearTimeout(deadline);
    console.log(`ok ${flow} ${mode}`);
    process.exit(0);
  })
  .catch((error) => {
    console.log(`failed ${flow} ${mode}: ${error.stack || error}`);
    process.exit(1);
  });
