// @herald/client for Node (package.json `exports` condition "node"): the same API as index.js,
// but the WebAssembly module is read from disk (Node's fetch does not read file: URLs), and
// paths or file: URLs given to initHerald are read the same way. The WebSocket is Node 22+'s
// global one, or the class passed as `options.WebSocket` (the `ws` package in Node 20).
// Reading the file was measured against embedding the module as base64 in a JS file (Node 20,
// 388 KiB of wasm, median of 50): readFile 0.55 ms; parsing and decoding the 517 KiB base64
// module 2.7 ms, and the gzipped tarball 190 KiB larger (a second copy: browsers keep the .wasm).

import { readFile } from 'node:fs/promises';

import { setWasmSource } from './client.js';

setWasmSource(async (moduleOrPath) => {
  if (moduleOrPath === undefined) {
    return readFile(new URL('./herald_wasm_bg.wasm', import.meta.url));
  }
  if (moduleOrPath instanceof URL && moduleOrPath.protocol === 'file:') return readFile(moduleOrPath);
  if (typeof moduleOrPath === 'string') {
    if (moduleOrPath.startsWith('file:')) return readFile(new URL(moduleOrPath));
    if (!/^[a-z][a-z0-9+.-]+:/i.test(moduleOrPath)) return readFile(moduleOrPath); // a path
  }
  return moduleOrPath; // a module, bytes, a Response, or an http(s) URL (fetched)
});

export { HeraldClient, initHerald, parseChannelName } from './client.js';
