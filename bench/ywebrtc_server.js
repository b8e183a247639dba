// y-webrtc's own signaling server (npm y-webrtc, bin/server.js) as the
// reference for our y-webrtc dialect in the benchmark, on a free loopback
// port. It listens on PORT (all interfaces); here its listen is held to
// 127.0.0.1 and port 0, and "y-webrtc listening on ws://127.0.0.1:PORT"
// is printed once it accepts connections.
"use strict";
const http = require("http");
const path = require("path");
const { pathToFileURL } = require("url");

const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function () {
  this.once("listening", () => {
    console.log(`y-webrtc listening on ws://127.0.0.1:${this.address().port}`);
  });
  return listen.call(this, 0, "127.0.0.1");
};
import(pathToFileURL(path.join(__dirname, "node_modules", "y-webrtc", "bin", "server.js")).href);
