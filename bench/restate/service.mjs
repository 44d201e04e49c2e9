// Restate side of the `stoa bench e2e` throughput comparison: a Node service
// (HTTP/2 endpoint on 127.0.0.1) whose handlers each perform K sequential
// durable steps.
//
//   Bench/run  {k}  K sequential `ctx.run` steps of a no-op (each step is a
//                   journal entry the server persists before the handler
//                   continues).
//   Bench/call {k}  K sequential durable RPCs to `Noop/noop` (each call is a
//                   journaled call plus a separate invocation of `noop`; the
//                   closest shape to a Stoa rule calling `bench.noop`).
//   Noop/noop  x    returns its input.
//
// Usage: node service.mjs PORT   (prints "listening on 127.0.0.1:PORT")

// Node 20 lacks Promise.withResolvers (Node >= 22), which the SDK uses. The
// polyfill must exist before the SDK loads, hence the dynamic import below
// (static imports are hoisted above any statement).
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve, reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

const http2 = await import("node:http2");
const restate = await import("@restatedev/restate-sdk");

const noopFn = (x) => x;

const noop = restate.service({
  name: "Noop",
  handlers: {
    noop: async (_ctx, x) => noopFn(x),
  },
});

const bench = restate.service({
  name: "Bench",
  handlers: {
    run: async (ctx, req) => {
      const k = req.k;
      let last = null;
      for (let i = 0; i < k; i++) {
        last = await ctx.run("step", () => noopFn({ n: i }));
      }
      return { steps: k, last };
    },
    call: async (ctx, req) => {
      const k = req.k;
      const client = ctx.serviceClient({ name: "Noop" });
      let last = null;
      for (let i = 0; i < k; i++) {
        last = await client.noop({ n: i });
      }
      return { steps: k, last };
    },
  },
});

const port = Number(process.argv[2] ?? process.env.PORT ?? 9080);
const server = http2.createServer(restate.createEndpointHandler({ services: [bench, noop] }));
server.listen(port, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});
// Restate keeps its HTTP/2 sessions open, so a graceful close would wait for
// them; the handlers hold no state of their own, so just exit.
const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
