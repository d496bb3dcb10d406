// Helper for the Rust interop test (tests/tests/e2e/sdk.rs): the official socket.io-client
// listens to one channel and prints each event's JSON on its own line.
// Usage: node interop-listen.mjs <url> <projectId> <channel> <count>
import { io } from 'socket.io-client';

const [url, projectId, channel, count] = process.argv.slice(2);
const socket = io(url, { auth: { projectId }, transports: ['websocket'], reconnection: false });
let seen = 0;
socket.on('event', (e) => {
  process.stdout.write(`${JSON.stringify(e)}\n`);
  if (++seen >= Number(count)) {
    socket.disconnect();
    process.exit(0);
  }
});
socket.on('connect_error', (e) => {
  process.stderr.write(`connect_error: ${e.message}\n`);
  process.exit(2);
});
socket.on('connect', async () => {
  const ack = await socket.timeout(5000).emitWithAck('listen', { channelName: channel });
  process.stdout.write(`ready ${JSON.stringify(ack)}\n`);
});
setTimeout(() => {
  process.stderr.write('timeout\n');
  process.exit(3);
}, 20000);
