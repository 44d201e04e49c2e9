// Benchmark client: the `stoa bench e2e` throughput case against Restate.
//
// Starts N invocations of Bench/<variant> (each K sequential durable steps)
// concurrently through the ingress (`POST /Bench/<variant>/send` with an
// idempotency key), attaches to each (`GET /restate/invocation/<id>/attach`),
// and measures the wall time from the first start until the last completion.
// One warm-up invocation of 5 steps runs first, as in `stoa bench e2e`.
//
// Usage: node bench.mjs --ingress http://127.0.0.1:PORT --variant run|call
//          [--n 200] [--k 20] [--server-pid PID] [--service-pid PID]
//          [--timeout-s 600] [--version X]
// Prints one JSON line.

import http from "node:http";
import fs from "node:fs";
import os from "node:os";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []),
);
const ingress = new URL(args.ingress ?? "http://127.0.0.1:8080");
const variant = args.variant ?? "run";
const N = Number(args.n ?? 200);
const K = Number(args.k ?? 20);
const limitMs = Number(args["timeout-s"] ?? 600) * 1000;
if (!["run", "call"].includes(variant)) throw new Error(`unknown variant ${variant}`);

const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });

// One HTTP request with a hard deadline; resolves {status, body}.
function request(method, path, { body, headers = {}, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = http.request(
      {
        agent,
        host: ingress.hostname,
        port: ingress.port,
        method,
        path,
        headers: { ...headers, ...(data ? { "content-type": "application/json", "content-length": data.length } : {}) },
      },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString() }));
        res.on("error", reject);
      },
    );
    const timer = setTimeout(() => req.destroy(new Error(`${method} ${path}: no answer within ${timeoutMs} ms`)), timeoutMs);
    req.on("close", () => clearTimeout(timer));
    req.on("error", reject);
    req.end(data);
  });
}

// Start one invocation and wait for its result; returns the output.
async function invoke(key, k, deadline) {
  const left = () => Math.max(1, deadline - Date.now());
  const sent = await request("POST", `/Bench/${variant}/send`, {
    body: { k },
    headers: { "idempotency-key": key },
    timeoutMs: left(),
  });
  if (sent.status !== 200 && sent.status !== 202) throw new Error(`send ${key}: HTTP ${sent.status} ${sent.body}`);
  const { invocationId } = JSON.parse(sent.body);
  const out = await request("GET", `/restate/invocation/${invocationId}/attach`, { timeoutMs: left() });
  if (out.status !== 200) throw new Error(`attach ${key} (${invocationId}): HTTP ${out.status} ${out.body}`);
  const result = JSON.parse(out.body);
  if (result.steps !== k) throw new Error(`${key}: expected ${k} steps, got ${out.body}`);
  return result;
}

function vmHwmMib(pid) {
  if (!pid) return null;
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    const m = s.match(/^VmHWM:\s+(\d+)\s+kB/m);
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
function cpuSecs(pid) {
  if (!pid) return null;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in USER_HZ (100)
  } catch {
    return null;
  }
}
const serverPid = Number(args["server-pid"]);
const servicePid = Number(args["service-pid"]);

const round = (x, d = 3) => Math.round(x * 10 ** d) / 10 ** d;
const run = Date.now().toString(36);

// Warm-up: connections, deployment discovery, partition leaders. Retried
// (bounded) while the ingress has not yet seen the new deployment.
{
  const warmDeadline = Date.now() + 60_000;
  for (let attempt = 0; ; attempt++) {
    try {
      await invoke(`warm-${run}-${attempt}`, 5, warmDeadline);
      break;
    } catch (e) {
      if (Date.now() > warmDeadline) throw e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

const load0 = os.loadavg()[0];
const cpu0 = [cpuSecs(serverPid), cpuSecs(servicePid), process.cpuUsage()];
const deadline = Date.now() + limitMs;
const t0 = process.hrtime.bigint();
await Promise.all(Array.from({ length: N }, (_, i) => invoke(`s-${run}-${i}`, K, deadline)));
const secs = Number(process.hrtime.bigint() - t0) / 1e9;
const load1 = os.loadavg()[0];
const cpuDelta = (a, b) => (a === null || b === null ? null : round(b - a, 2));
const clientCpu = process.cpuUsage(cpu0[2]);

console.log(
  JSON.stringify({
    peer: "restate",
    case: `${N} workflows x ${K} sequential steps`,
    variant,
    step: variant === "run" ? "ctx.run(no-op)" : "durable call Noop/noop",
    workflows: N,
    steps: K,
    seconds: round(secs, 4),
    workflows_per_s: round(N / secs, 1),
    steps_per_s: round((N * K) / secs, 1),
    peer_rss_mib: vmHwmMib(serverPid) && round(vmHwmMib(serverPid), 1),
    service_rss_mib: vmHwmMib(servicePid) && round(vmHwmMib(servicePid), 1),
    peer_cpu_s: cpuDelta(cpu0[0], cpuSecs(serverPid)),
    service_cpu_s: cpuDelta(cpu0[1], cpuSecs(servicePid)),
    client_cpu_s: round((clientCpu.user + clientCpu.system) / 1e6, 2),
    peer_version: args.version ?? null,
    loadavg_1m_before: round(load0, 2),
    loadavg_1m_after: round(load1, 2),
    cpus: os.cpus().length,
  }),
);
agent.destroy();
