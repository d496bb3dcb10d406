// A Node program using the installed @herald/client as an npm user would (a bare import,
// resolved through the package's `exports`), run as a child process by ../node.test.mjs.
//
// Env: HERALD_URL, PROJECT, SIGN_KEY (a `sign_token` API key; the authorize callback signs
// with it like a backend would), CHANNELS (comma-separated), EVENTS (how many to wait for),
// MODE: `ws` (options.WebSocket = the ws package's class), `global` (no option: the global
// WebSocket) or `none` (the global removed: prints the constructor's error and exits);
// FAST=1: short reconnection delays. Prints one JSON object a line: {ready}, {event},
// {state}, {authorize}, {error}, {done}.

const print = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
const plain = (e) => ({ name: e?.name, code: e?.code, message: e?.message });

// Every fetch is recorded: loading the WebAssembly module must not use one.
const fetched = [];
const realFetch = globalThis.fetch;
globalThis.fetch = (input, init) => {
  fetched.push(String(input instanceof Request ? input.url : input));
  return realFetch(input, init);
};

const { MODE, HERALD_URL, PROJECT, SIGN_KEY } = process.env;
const channels = (process.env.CHANNELS ?? '').split(',').filter(Boolean);
const wanted = Number(process.env.EVENTS ?? channels.length);

if (MODE === 'none') delete globalThis.WebSocket;
const { HeraldClient, parseChannelName } = await import('@herald/client');

const options = {
  projectId: PROJECT,
  authorize: async (channelName) => {
    print({ authorize: channelName });
    const res = await fetch(new URL('/v1/publishers/sign', HERALD_URL), {
      method: 'POST',
      headers: { authorization: `Bearer ${SIGN_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ channelName }),
    });
    if (!res.ok) throw new Error(`sign ${channelName}: HTTP ${res.status}`);
    return res.json(); // { token, expiresAt }
  },
};
if (process.env.FAST) Object.assign(options, { reconnectDelayMs: 100, reconnectDelayMaxMs: 400 });
if (MODE === 'ws') options.WebSocket = (await import('ws')).WebSocket;

let client;
try {
  client = new HeraldClient(HERALD_URL, options);
} catch (error) {
  print({ error: plain(error) });
  process.exit(0);
}

print({ globalWebSocket: typeof globalThis.WebSocket, parsed: await parseChannelName('private-x') });
client.on('state', (state) => print({ state }));
let received = 0;
const done = new Promise((resolve) => {
  client.on('event', (e) => {
    print({ event: e });
    if (++received === wanted) resolve();
  });
});
try {
  await client.connect();
  for (const channel of channels) await client.listen(channel);
} catch (error) {
  print({ error: plain(error) });
  await client.close();
  process.exit(1);
}
print({ ready: client.channels });
await done;
await client.close();
// No exit() call: the process ends by itself once the client is closed. What still keeps it
// alive right after close(): timers must not be among it (the socket may still be closing).
const timers = process.getActiveResourcesInfo().filter((r) => r === 'Timeout');
print({ done: true, fetched, timers });
