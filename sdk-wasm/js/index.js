// @herald/client for browsers and bundlers (package.json `exports` picks node.js in Node):
// the WebAssembly module is fetched from next to herald_wasm.js (`new URL(…, import.meta.url)`,
// which Vite and webpack 5 handle), the WebSocket is the browser's.

export { HeraldClient, initHerald, parseChannelName } from './client.js';
