// Typed payloads with @herald/client, compiled by ../node.test.mjs with `tsc --strict --noEmit`
// (NodeNext resolution, the packed package installed in node_modules). The @ts-expect-error
// lines must stay errors: a typed handler really is typed.
import { HeraldClient } from '@herald/client';
import type { ChannelEvent, HeraldError, WebSocketConstructor } from '@herald/client';

interface Order {
  id: number;
  items: { sku: string; quantity: number }[];
}

declare const WebSocketFromWs: WebSocketConstructor;

const client = new HeraldClient('http://127.0.0.1:8080', { projectId: 'acme', WebSocket: WebSocketFromWs });

// The payload type as a type argument…
const off: () => void = client.on<Order>('event', (e) => {
  const id: number = e.payload.id;
  const skus: string[] = e.payload.items.map((item) => item.sku);
  console.log(e.channelName, id, skus);
});
off();

// …or on the handler's parameter.
function onOrder(e: ChannelEvent<Order>): void {
  console.log(e.id, e.payload.items.length);
}
client.on('event', onOrder);
client.off('event', onOrder);

// Untyped handlers get `unknown` payloads.
client.on('event', (e) => {
  // @ts-expect-error: an untyped payload is unknown, not any
  console.log(e.payload.id);
});

client.on<Order>('event', (e) => {
  // @ts-expect-error: Order has no field `total`
  console.log(e.payload.total);
});

// @ts-expect-error: a typed `event` handler still takes a ChannelEvent
client.on<Order>('event', (e: number) => e);

// The other events keep their own listener types.
client.on('state', (state, detail) => console.log(state, detail?.attempt));
client.on('relisten_failed', ({ channelName, error }: { channelName: string; error: HeraldError }) =>
  console.log(channelName, error.code),
);
// @ts-expect-error: a payload type argument is for `event` only
client.on<Order>('state', () => {});

await client.connect();
await client.listen('orders');
await client.close();
