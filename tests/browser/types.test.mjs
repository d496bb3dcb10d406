// The npm tarball as a TypeScript web app sees it: package.json entry points, and index.d.ts
// declaring the API (compiled with `tsc --noEmit` against a consumer file, including usages
// that must NOT compile). Also: the declared server error codes are exactly the protocol's.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';

import { repoRoot } from '../js/harness.mjs';
import { unpackTarball } from './lib.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const tsc = path.join(here, 'node_modules', 'typescript', 'bin', 'tsc');
const pkgDir = unpackTarball();
after(() => rmSync(path.dirname(pkgDir), { recursive: true, force: true }));

const CONSUMER = `
import { HeraldClient, initHerald, parseChannelName } from '@herald/client';
import type {
  ChannelEvent, ConnectionState, HeraldError, HeraldClientOptions, Member, PresenceChange,
  PresenceSynced, Recovery, RecoveryReason, StateDetail, SystemMessage,
} from '@herald/client';

const options: HeraldClientOptions = {
  projectId: 'acme',
  authorize: async (channelName: string) => \`token-for-\${channelName}\`,
  reconnectDelayMs: 250,
};
const client = new HeraldClient('https://herald.example.com', options);
const sync = new HeraldClient(new URL('https://h.example'), { projectId: 'a', authorize: () => ({ token: 't' }) });

async function main(): Promise<void> {
  await initHerald();
  const connected: Promise<void> = client.connect();
  await connected;
  const listened: Promise<void> = client.listen('orders');
  await listened.catch((err: HeraldError) => {
    const code: string = err.code;
    if (err.code === 'token_expired' || err.code === 'timeout' || err.code === 'invalid_channel_name') {
      console.log(code, err.message);
    }
  });
  await client.remove('orders');
  const off: () => void = client.on('event', (e: ChannelEvent) => {
    const name: string = e.channelName;
    const id: string | undefined = e.id;
    console.log(name, id, e.payload);
  });
  off();
  client.on('system_message', (m: SystemMessage) => {
    if (m.code === 'RemovedFromChannel') console.log(m.data?.channels?.join(','));
  });
  client.on('state', (state, detail?: StateDetail) => {
    const s: 'connecting' | 'connected' | 'reconnecting' | 'closed' = state;
    console.log(s, detail?.attempt, detail?.delayMs, detail?.error?.code);
  });
  client.on('relisten_failed', ({ channelName, error }) => console.log(channelName, error.code));
  client.on('recovery', (r: Recovery) => {
    const recovered: boolean = r.recovered;
    const reason: RecoveryReason | undefined = r.reason;
    if (reason === 'epoch_changed' || reason === 'offset_gap') console.log(r.channelName, recovered);
  });
  client.on('presence', (p: PresenceChange) => {
    const added: boolean = p.action === 'member_added';
    const who: string = p.member.userId;
    console.log(p.channelName, added, who, p.member.info?.name);
  });
  client.on('presence_synced', ({ channelName, members }: PresenceSynced) => console.log(channelName, members.length));
  const members: Member[] = client.members('presence-room');
  console.log(members.map((m) => m.userId));
  const state: ConnectionState = client.state;
  const channels: string[] = client.channels;
  const parsed: { name: string; private: boolean } = await parseChannelName('private-u1');
  console.log(state, channels, parsed, sync.url);
  await client.close();

  // @ts-expect-error: projectId is required
  new HeraldClient('https://h.example', {});
  // @ts-expect-error: unknown event name
  client.on('message', () => {});
  // @ts-expect-error: channel names are strings
  await client.listen(42);
  // @ts-expect-error: an event listener gets a ChannelEvent, not a number
  client.on('event', (n: number) => n);
  // @ts-expect-error: a recovery's reason is one of four strings
  client.on('recovery', (r) => r.reason === 'gone');
  // @ts-expect-error: a presence action is member_added or member_removed
  client.on('presence', (p) => p.action === 'joined');
  // @ts-expect-error: state is read-only
  client.state = 'connected';
}
void main();
`;

describe('@herald/client package and declarations', () => {
  it('package.json points at the ES module and its declarations, and ships the wasm', () => {
    const pkg = JSON.parse(readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
    assert.equal(pkg.name, '@herald/client');
    assert.match(pkg.version, /^\d+\.\d+\.\d+/);
    assert.notEqual(pkg.version, '0.0.0');
    assert.equal(pkg.type, 'module');
    assert.equal(pkg.exports['.'].import, './index.js');
    assert.equal(pkg.exports['.'].types, './index.d.ts');
    for (const f of ['index.js', 'index.d.ts', 'herald_wasm.js', 'herald_wasm_bg.wasm', 'README.md']) {
      assert.ok(readFileSync(path.join(pkgDir, f)).length > 0, f);
    }
  });

  it('index.d.ts declares the API: a TypeScript consumer compiles with tsc --noEmit', { timeout: 60_000 }, () => {
    const app = mkdtempSync(path.join(tmpdir(), 'herald-ts-'));
    try {
      const dest = path.join(app, 'node_modules', '@herald', 'client');
      mkdirSync(path.dirname(dest), { recursive: true });
      cpSync(pkgDir, dest, { recursive: true });
      writeFileSync(path.join(app, 'app.ts'), CONSUMER);
      writeFileSync(
        path.join(app, 'tsconfig.json'),
        JSON.stringify({
          compilerOptions: {
            target: 'ES2022',
            module: 'ESNext',
            moduleResolution: 'Bundler',
            lib: ['ES2022', 'DOM'],
            strict: true,
            noEmit: true,
            skipLibCheck: false,
            types: [],
          },
          files: ['app.ts'],
        }),
      );
      try {
        execFileSync(process.execPath, [tsc, '-p', app], { cwd: app, encoding: 'utf8' });
      } catch (e) {
        assert.fail(`tsc --noEmit failed:\n${e.stdout}${e.stderr}`);
      }
    } finally {
      rmSync(app, { recursive: true, force: true });
    }
  });

  it('README.md (what npm shows) is self-contained: no links outside the package', () => {
    const readme = readFileSync(path.join(pkgDir, 'README.md'), 'utf8');
    const targets = [...readme.matchAll(/\]\(([^)\s]+)[^)]*\)/g)].map((m) => m[1]);
    assert.ok(targets.length > 0, 'the README has its table of contents');
    assert.deepEqual(targets.filter((t) => !t.startsWith('#') && !/^https:\/\//.test(t)), []);
    for (const section of ['## Install', '## In a browser', '## In Node.js', '## Typed payloads', '## Errors', '## Reconnection']) {
      assert.ok(readme.includes(section), section);
    }
  });

  it('ServerErrorCode lists exactly the codes of herald-protocol', () => {
    const rust = readFileSync(path.join(repoRoot, 'protocol', 'src', 'error.rs'), 'utf8');
    const protocol = [...rust.matchAll(/=\s*"([a-z_]+)"\s*=>/g)].map((m) => m[1]).sort();
    const dts = readFileSync(path.join(pkgDir, 'index.d.ts'), 'utf8');
    const union = dts.slice(dts.indexOf('export type ServerErrorCode'), dts.indexOf(';', dts.indexOf('export type ServerErrorCode')));
    const declared = [...union.matchAll(/'([a-z_]+)'/g)].map((m) => m[1]).sort();
    assert.ok(protocol.length > 30, 'codes found in protocol/src/error.rs');
    assert.deepEqual(declared, protocol);
  });
});
