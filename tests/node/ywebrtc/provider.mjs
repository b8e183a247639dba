// One y-webrtc provider (npm y-webrtc + yjs, WebRTC from @roamhq/wrtc) in
// its own process: joins ROOM through the signaling server at URL, adds its
// line to the shared Y.Text and prints one JSON line once the text holds
// every line in EXPECT (or "timeout" after TIMEOUT ms).
//
//   node provider.mjs URL ROOM NAME EXPECT[,EXPECT...] [PASSWORD]
//
// Each provider runs in a child process: Node's BroadcastChannel spans
// worker threads, and y-webrtc would sync through it, not the server.
import wrtc from '@roamhq/wrtc'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebrtcProvider } from 'y-webrtc'

globalThis.WebSocket = WebSocket

const [url, room, name, expect, password] = process.argv.slice(2)
const wanted = expect.split(',')
const timeout = Number(process.env.TIMEOUT || 20000)

const doc = new Y.Doc()
const text = doc.getText('shared')
const provider = new WebrtcProvider(room, doc, {
  signaling: [url],
  password: password || null,
  peerOpts: { wrtc, config: { iceServers: [] } }
})

// What the server sent back: the echo of our own publishes included, and
// the kind of their data (an object, or a string in a room with a password).
const seen = []
const kinds = new Set()
provider.signalingConns.forEach((conn) => {
  conn.on('message', (message) => {
    if (message.type === 'publish') {
      seen.push(message.clients)
      kinds.add(typeof message.data)
    }
  })
})

// The line printed is the result. The process stays (so that the other
// provider gets all it needs) until the parent closes its stdin, then
// exits without destroying the provider: @roamhq/wrtc may crash while peer
// connections are torn down at exit.
const finish = (result) => {
  process.stdout.write(JSON.stringify(result) + '\n')
}
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()

text.insert(0, name + '\n')
const check = () => {
  const lines = text.toString().split('\n').filter(Boolean).sort()
  if (wanted.every((line) => lines.includes(line))) {
    clearTimeout(timer)
    text.unobserve(check)
    finish({ name, lines, published: seen.length > 0, data: [...kinds].sort() })
  }
}
const timer = setTimeout(
  () => finish({ name, timeout: true, lines: text.toString().split('\n').filter(Boolean) }),
  timeout
)
text.observe(check)
check()
