// PeerJS server (npm `peer`) on a free loopback port, as a reference in the
// benchmark. Prints "peerjs listening on ws://127.0.0.1:PORT".
"use strict";
const { PeerServer } = require("peer");

PeerServer({ port: 0, host: "127.0.0.1", path: "/", concurrent_limit: 1000000 }, (server) => {
  console.log(`peerjs listening on ws://127.0.0.1:${server.address().port}`);
});
