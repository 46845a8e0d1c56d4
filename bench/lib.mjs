// Helpers shared by the bench scripts (run.mjs, latency.mjs, webhook-cost.mjs, coldstart.mjs, ...).
import { spawnSync } from "node:child_process"
import { readFileSync } from "node:fs"
import net from "node:net"

/** A loopback port that was free a moment ago. */
/** Limits that a benchmark never reaches: each is checked and counted on every request. */
export const LIMITS_NEVER_REACHED =
  "requests_per_minute=1000000000,tokens_per_minute=1000000000000,concurrent_requests=100000,tokens_per_day=1000000000000,tokens_per_month=1000000000000"

export const freePort = () =>
  new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.on("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

/** Clock ticks per second, the unit of /proc CPU times. */
export const CLK_TCK = (() => {
  try {
    return Number(spawnSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).stdout.trim()) || 100
  } catch {
    return 100
  }
})()

/**
 * CPU ticks of a process from /proc/PID/stat: `own` (all its threads, user + system) and `reaped`
 * (its children that it has waited for); undefined when the process is gone or not on Linux.
 */
export const statTicks = (pid) => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ") // f[11..14] = utime stime cutime cstime
    return { own: Number(f[11]) + Number(f[12]), reaped: Number(f[13]) + Number(f[14]) }
  } catch {
    return undefined
  }
}

/** The CPUs this process may use (a container or cgroup may allow fewer than os.cpus() reports). */
export const allowedCpus = () => {
  const list = readFileSync("/proc/self/status", "utf8").match(/^Cpus_allowed_list:\s*(\S+)/m)?.[1] ?? ""
  return list.split(",").filter(Boolean).flatMap((r) => {
    const [a, b = a] = r.split("-").map(Number)
    return Array.from({ length: b - a + 1 }, (_, i) => a + i)
  })
}

/**
 * The nginx every bench compares with: 1 worker, `proxy_buffering off` (streams pass as they
 * come), HTTP/1.1 keep-alive to the upstream. It checks no API key. `dir` holds its pid, logs and
 * temp files.
 */
export const nginxConf = ({ dir, port, upstreamPort }) => `
daemon off;
master_process on;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_timeout 65s;
  keepalive_requests 1000000;
  upstream ollama {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://ollama;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host 127.0.0.1:${upstreamPort};
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
`
