/**
 * `npm run demo`, run as a newcomer runs it, and stopped the ways a terminal, `timeout` or a
 * supervisor stops it: each of SIGTERM, SIGINT and SIGHUP, sent to npm alone or to its whole
 * process group, must end npm, the demo script, the proxy and the (fake) Ollama, and free the port.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { once } from "node:events"
import { readdirSync, readFileSync } from "node:fs"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { connect } from "node:net"
import { afterEach, describe, expect, it } from "vitest"
import { freePort } from "./support/http.js"
import { isAlive, waitGone } from "./support/processes.js"
import { ROOT } from "./support/proxy.js"
import { makeSignal } from "./support/signal.js"

interface Demo {
  readonly npm: ChildProcess
  /** The processes below npm once the demo is up, for the clean-up of a failed test. */
  tree: Array<number>
  readonly port: number
  readonly output: () => string
  readonly until: (pattern: RegExp, timeoutMs?: number) => Promise<RegExpMatchArray>
}

const running: Array<Demo> = []
afterEach(() => {
  // A failed test must not leave a demo behind.
  for (const demo of running.splice(0)) {
    for (const pid of new Set([demo.npm.pid!, ...demo.tree, ...descendants(demo.npm.pid!)])) {
      try {
        process.kill(pid, "SIGKILL")
      } catch {
        // gone
      }
    }
  }
})

/** Every process below `root`, read from /proc. */
const descendants = (root: number): Array<number> => {
  const parentOf = new Map<number, number>()
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8")
      parentOf.set(Number(name), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]))
    } catch {
      // exited meanwhile
    }
  }
  const found: Array<number> = []
  for (let frontier = [root]; frontier.length > 0;) {
    frontier = [...parentOf].filter(([, parent]) => frontier.includes(parent)).map(([pid]) => pid)
    found.push(...frontier)
  }
  return found
}

const commandOf = (pid: number) => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").replaceAll("\0", " ").trim()
  } catch {
    return ""
  }
}

const startDemo = async (): Promise<Demo> => {
  const port = await freePort()
  // Its own process group, as a terminal gives a command: the group can then be signalled whole.
  const npm = spawn("npm", ["run", "demo"], {
    cwd: ROOT,
    env: { ...process.env, DEMO_PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true
  })
  let output = ""
  const changed = makeSignal()
  for (const stream of [npm.stdout!, npm.stderr!]) {
    stream.setEncoding("utf8").on("data", (chunk: string) => {
      output += chunk
      changed.notify()
    })
  }
  const demo: Demo = {
    npm,
    tree: [],
    port,
    output: () => output,
    until: (pattern, timeoutMs = 20_000) =>
      changed.until(() => output.match(pattern) ?? undefined, timeoutMs, () => `no ${pattern} in the demo's output:\n${output}`)
  }
  running.push(demo)
  await demo.until(/Ctrl-C to stop/)
  demo.tree = descendants(npm.pid!)
  return demo
}

const portAnswers = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = connect(port, "127.0.0.1")
    socket.on("connect", () => {
      socket.destroy()
      resolve(true)
    })
    socket.on("error", () => resolve(false))
  })

describe("npm run demo", () => {
  it("with its port taken by a server that answers /ping, says so in one line naming DEMO_PORT, prints no banner, and exits 1", async () => {
    const seen: Array<string> = []
    const squatter = createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`)
      res.writeHead(200).end()
    }).listen(0, "127.0.0.1")
    await once(squatter, "listening")
    const port = (squatter.address() as AddressInfo).port
    try {
      const npm = spawn("npm", ["run", "demo"], {
        cwd: ROOT,
        env: { ...process.env, DEMO_PORT: String(port) },
        stdio: ["ignore", "pipe", "pipe"]
      })
      let stdout = ""
      let stderr = ""
      npm.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk))
      npm.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk))
      const [code] = await once(npm, "exit")
      expect(code).toBe(1)
      // npm adds its own lines about the failed script; the demo's is one.
      const ours = stderr.split("\n").filter((line) => line !== "" && !line.startsWith("npm "))
      expect(ours).toEqual([
        `demo: port ${port} on 127.0.0.1 is taken by another process: set DEMO_PORT to a free port, e.g. DEMO_PORT=${port + 1} npm run demo`
      ])
      expect(stdout).not.toContain("API key")
      expect(seen).toEqual([])
    } finally {
      squatter.close()
    }
  })

  it("prints the usage record of each request", async () => {
    const demo = await startDemo()
    const key = (await demo.until(/API key: (\S+)/))[1]!
    const answer = await fetch(`http://127.0.0.1:${demo.port}/api/chat`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}` },
      body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hello!" }] })
    })
    expect(answer.status).toBe(200)
    const lines = (await answer.text()).trim().split("\n").map((l) => JSON.parse(l))
    const requestId = answer.headers.get("x-request-id")!
    const [, json] = await demo.until(new RegExp(`usage record: (\\{.*"request_id":"${requestId}".*\\})`))
    expect(JSON.parse(json!)).toMatchObject({
      endpoint: "/api/chat",
      model: "llama3.2",
      api_key_name: "demo",
      outcome: "completed",
      eval_count: lines.at(-1).eval_count
    })
    process.kill(-demo.npm.pid!, "SIGINT")
    expect(await waitGone(demo.npm.pid!, 15_000)).toBe(true)
  })

  for (const signal of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    for (const target of ["npm", "the process group"] as const) {
      it(`stops entirely on ${signal} to ${target}`, async () => {
        const demo = await startDemo()
        const npmPid = demo.npm.pid!
        const tree = demo.tree
        const commands = tree.map(commandOf)
        // What must stop: npm, the script, the proxy and the fake Ollama it started.
        expect(commands.some((c) => c.includes("scripts/demo.mjs"))).toBe(true)
        expect(commands.some((c) => c.includes("dist/main.js"))).toBe(true)
        expect(commands.some((c) => c.includes("fake-ollama/bin/ollama serve"))).toBe(true)
        expect(await portAnswers(demo.port)).toBe(true)

        process.kill(target === "npm" ? npmPid : -npmPid, signal)

        for (const pid of [npmPid, ...tree]) {
          expect(await waitGone(pid, 15_000), `${commandOf(pid) || pid} still runs`).toBe(true)
        }
        expect(await portAnswers(demo.port)).toBe(false)
        expect([npmPid, ...tree].filter(isAlive)).toEqual([])
      })
    }
  }
})
