/**
 * The worker's life with the fake `ollama` executable as OLLAMA_BIN and the built bundle as the
 * proxy: start-up, preload, crash and restart, shutdown, and no orphan child on any path.
 */
import { build } from "esbuild"
import { spawn } from "node:child_process"
import { once } from "node:events"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, afterEach, describe, expect, it } from "vitest"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { freePort } from "./support/http.js"
import { isAlive, waitGone } from "./support/processes.js"
import { FAKE_OLLAMA_BIN, ROOT, type SpawnedProxy, spawnManaged, startProxy } from "./support/proxy.js"

const dir = mkdtempSync(join(tmpdir(), "lifecycle-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

let recordFiles = 0
const recordFile = () => join(dir, `record-${recordFiles++}.ndjson`)

interface Recorded {
  readonly method: string
  readonly path: string
  readonly body: string | null
}
const recorded = (file: string): Array<Recorded> => {
  try {
    return readFileSync(file, "utf8").trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as Recorded)
  } catch {
    return []
  }
}
const bodyOf = (r: Recorded) => JSON.parse(r.body ?? "{}") as Record<string, unknown>

const running: Array<SpawnedProxy> = []
/** Stops what a test left running the way RunPod does, and checks that no child outlived it. */
afterEach(async () => {
  const proxies = running.splice(0)
  await Promise.all(proxies.map(async (proxy) => {
    const hard = setTimeout(() => proxy.child.kill("SIGKILL"), 15_000)
    await proxy.kill("SIGTERM")
    clearTimeout(hard)
  }))
  for (const proxy of proxies) {
    for (const line of proxy.lines.filter((l) => l.msg === "ollama started")) {
      const pid = Number(line.pid)
      if (!(await waitGone(pid))) {
        process.kill(-pid, "SIGKILL")
        throw new Error(`ollama ${pid} outlived its proxy`)
      }
    }
  }
})

/** The bundle managing the fake Ollama on a free port. */
const start = async (env: Record<string, string> = {}, options: { waitForListening?: boolean } = {}) => {
  const proxy = await spawnManaged(env, options)
  running.push(proxy)
  return proxy
}

const ping = async (url: string) => {
  const res = await fetch(`${url}/ping`)
  const text = await res.text()
  return { status: res.status, body: text === "" ? undefined : JSON.parse(text) }
}

const childPid = async (proxy: SpawnedProxy, nth = 0) => {
  await proxy.waitForLine(() => proxy.lines.filter((l) => l.msg === "ollama started").length > nth)
  return Number(proxy.lines.filter((l) => l.msg === "ollama started")[nth]!.pid)
}

const count = (proxy: SpawnedProxy, msg: string) => proxy.lines.filter((l) => l.msg === msg).length
const indexOf = (proxy: SpawnedProxy, msg: string) => proxy.lines.findIndex((l) => l.msg === msg)

describe("start-up", () => {
  it("answers /ping 204 until Ollama answers, then 200; a request meanwhile is served as soon as Ollama answers", async () => {
    const proxy = await start({ FAKE_OLLAMA_STARTUP_DELAY_MS: "800" })
    // The fake logs "Listening" at once but answers only after the delay.
    await proxy.waitForLine((l) => l.source === "ollama" && String(l.msg).startsWith("Listening on"))
    expect((await ping(proxy.url)).status).toBe(204)
    expect((await fetch(`${proxy.url}/ping/`)).status).toBe(204)
    expect((await fetch(`${proxy.url}/ping`, { method: "HEAD" })).status).toBe(204)
    // Not refused while Ollama is starting: it may answer any moment, and does.
    const early = await fetch(`${proxy.url}/api/tags`)
    expect(early.status).toBe(200)
    expect(await early.json()).toMatchObject({ models: expect.any(Array) })

    await proxy.waitForLine((l) => l.msg === "ollama is up")
    const ready = await ping(proxy.url)
    expect(ready.status).toBe(200)
    expect(ready.body).toMatchObject({ status: "ready", ollama: { state: "up", managed: true, process: "running" } })
    expect((await fetch(`${proxy.url}/ping`, { method: "HEAD" })).status).toBe(200)
    expect((await fetch(`${proxy.url}/api/tags`)).status).toBe(200)
    // Ollama's own lines come through as ours, with its level.
    expect(proxy.lines.find((l) => l.msg === "inference compute")).toMatchObject({
      level: "info",
      source: "ollama",
      library: "CUDA",
      description: "NVIDIA L4",
      ollama_source: "types.go:32"
    })
  })

  it("fails with one line naming OLLAMA_BIN when the executable is missing", async () => {
    const proxy = await start({ OLLAMA_BIN: join(dir, "no-such-ollama") }, { waitForListening: false })
    const { code } = await proxy.exited
    expect(code).not.toBe(0)
    expect(proxy.stderr()).toMatch(/^ollama-authentication-proxy: OLLAMA_BIN: cannot start "[^"]+no-such-ollama serve": no such executable/)
    expect(proxy.stderr().trim().split("\n")).toHaveLength(1)
  })

  it("leaves no child behind when start-up fails after Ollama was started", async () => {
    const blocker = createServer()
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve))
    try {
      const port = (blocker.address() as { port: number }).port
      const proxy = await start({ PORT: String(port) }, { waitForListening: false })
      const { code } = await proxy.exited
      expect(code).toBe(1)
      expect(proxy.stderr()).toMatch(/^ollama-authentication-proxy: cannot listen on 127\.0\.0\.1:\d+: .*EADDRINUSE/)
      // Ollama starts before the listeners, so there was a child to stop.
      const started = proxy.lines.find((l) => l.msg === "ollama started")
      expect(started).toBeDefined()
      expect(await waitGone(Number(started!.pid))).toBe(true)
      expect(indexOf(proxy, "ollama stopped")).toBeGreaterThan(indexOf(proxy, "ollama started"))
    } finally {
      blocker.close()
    }
  })

  it("kills the child from the exit hook when the process dies of an uncaught exception", async () => {
    const bundle = join(dir, "crash-after-start.mjs")
    await build({
      entryPoints: [join(ROOT, "test/fixtures/crash-after-start.ts")],
      outfile: bundle,
      bundle: true,
      platform: "node",
      format: "esm",
      logLevel: "warning",
      banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" }
    })
    const child = spawn(process.execPath, [bundle], {
      env: { ...process.env, OLLAMA_BIN: FAKE_OLLAMA_BIN, OLLAMA_HOST: `127.0.0.1:${await freePort()}` },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let out = ""
    child.stdout.setEncoding("utf8").on("data", (c: string) => (out += c))
    const [code] = await once(child, "exit")
    expect(code).toBe(1)
    const pid = Number(JSON.parse(out.split("\n").find((l) => l.startsWith("{\"pid\""))!).pid)
    expect(await waitGone(pid)).toBe(true)
  })
})

describe("preload", () => {
  it("pulls and warms a chat and an embedding model, then reports 200", async () => {
    const file = recordFile()
    const proxy = await start({
      FAKE_OLLAMA_RECORD_FILE: file,
      FAKE_OLLAMA_MODELS: "",
      FAKE_OLLAMA_PULL_DELAY_MS: "40",
      PRELOAD_MODEL: "qwen3:0.6b",
      PRELOAD_MODEL_EMBED: "all-minilm"
    })
    await proxy.waitForLine((l) => l.msg === "pulling model")
    // Ollama is up, but the worker is not ready before its models are.
    expect((await ping(proxy.url)).status).toBe(204)
    await proxy.waitForLine((l) => l.msg === "models on disk")
    const after = await ping(proxy.url)
    expect(after.status).toBe(200)
    expect(after.body.preload).toMatchObject({
      state: "done",
      ready: 2,
      total: 2,
      failures: [],
      models: [
        { model: "qwen3:0.6b", state: "ready", warmedWith: "generate" },
        { model: "all-minilm", state: "ready", warmedWith: "embed" }
      ]
    })

    const requests = recorded(file).filter((r) => r.path.startsWith("/api/") && r.path !== "/api/version")
    const pulls = requests.filter((r) => r.path === "/api/pull").map((r) => bodyOf(r).model)
    expect(pulls.sort()).toEqual(["all-minilm", "qwen3:0.6b"])
    const generate = requests.filter((r) => r.path === "/api/generate").map(bodyOf)
    expect(generate).toContainEqual(expect.objectContaining({ model: "qwen3:0.6b", keep_alive: -1 }))
    const embed = requests.filter((r) => r.path === "/api/embed").map(bodyOf)
    expect(embed).toEqual([expect.objectContaining({ model: "all-minilm", keep_alive: -1 })])

    const onDisk = proxy.lines.filter((l) => l.msg === "model on disk").map((l) => l.model)
    expect(onDisk.sort()).toEqual(["all-minilm:latest", "qwen3:0.6b"])
    expect(proxy.lines.find((l) => l.msg === "models on disk")).toMatchObject({ count: 2 })
    // Progress is summarised, not echoed per line.
    expect(count(proxy, "pull progress")).toBeLessThanOrEqual(2 * 11)
  })

  it("reports a model that does not exist once, without retrying, and still becomes ready", async () => {
    const file = recordFile()
    const proxy = await start({ FAKE_OLLAMA_RECORD_FILE: file, PRELOAD_MODEL: "no-such-model" })
    await proxy.waitForLine((l) => l.msg === "preload finished")
    const { body, status } = await ping(proxy.url)
    expect(status).toBe(200)
    expect(body.preload.failures).toEqual([{ model: "no-such-model", error: expect.stringContaining("does not exist") }])
    expect(recorded(file).filter((r) => r.path === "/api/pull")).toHaveLength(1)
    expect(proxy.lines.filter((l) => l.level === "error" && l.model === "no-such-model")).toHaveLength(1)
  })

  it("retries a pull that loses its connection, and succeeds", async () => {
    const file = recordFile()
    const proxy = await start({
      FAKE_OLLAMA_RECORD_FILE: file,
      FAKE_OLLAMA_MODELS: "",
      FAKE_OLLAMA_PULL_FAIL_TIMES: "1",
      PRELOAD_MODEL: "qwen3:0.6b"
    })
    await proxy.waitForLine((l) => l.msg === "preload finished")
    expect((await ping(proxy.url)).body.preload.models).toEqual([
      { model: "qwen3:0.6b", state: "ready", warmedWith: "generate" }
    ])
    expect(recorded(file).filter((r) => r.path === "/api/pull")).toHaveLength(2)
    expect(proxy.lines.filter((l) => l.msg === "pull failed")).toEqual([expect.objectContaining({ attempt: 1 })])
  })
})

describe("crash and restart", () => {
  it("answers 503 while Ollama is down, restarts it, warms the models again, and answers 200", async () => {
    const file = recordFile()
    const proxy = await start({
      FAKE_OLLAMA_RECORD_FILE: file,
      FAKE_OLLAMA_CRASH_AFTER_CHUNKS: "2",
      PRELOAD_MODEL: "llama3.2"
    })
    await proxy.waitForLine((l) => l.msg === "preload finished")
    const firstPid = await childPid(proxy)
    expect((await ping(proxy.url)).status).toBe(200)

    // A generation makes the fake exit mid-stream; the client's connection is cut.
    const chat = await fetch(`${proxy.url}/api/chat`, {
      method: "POST",
      body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "hi" }] })
    })
    await expect(chat.text()).rejects.toThrow()
    await proxy.waitForLine((l) => l.msg === "ollama exited")
    expect(proxy.lines.find((l) => l.msg === "ollama exited")).toMatchObject({ level: "error", code: 1 })

    const down = await ping(proxy.url)
    expect(down.status).toBe(503)
    expect(down.body).toMatchObject({ status: "unhealthy", ollama: { state: "down", process: "restarting" } })
    const refused = await fetch(`${proxy.url}/api/tags`)
    expect(refused.status).toBe(503)
    expect(refused.headers.get("retry-after")).not.toBeNull()

    await proxy.waitForLine(() => count(proxy, "ollama is up") === 2)
    expect((await ping(proxy.url)).status).toBe(200)
    expect(await childPid(proxy, 1)).not.toBe(firstPid)
    expect(isAlive(firstPid)).toBe(false)
    await proxy.waitForLine(() => count(proxy, "model loaded") === 2)
    const warms = recorded(file).filter((r) => r.path === "/api/generate" && bodyOf(r).prompt === undefined)
    expect(warms.map((r) => bodyOf(r).model)).toEqual(["llama3.2", "llama3.2"])
  })
})

describe("shutdown", () => {
  it("lets a long stream finish on SIGTERM, then stops Ollama and exits 0", async () => {
    const proxy = await start({ FAKE_OLLAMA_TOKENS: "30", FAKE_OLLAMA_TOKEN_DELAY_MS: "30" })
    await proxy.waitForLine((l) => l.msg === "ollama is up")
    const pid = await childPid(proxy)
    const res = await fetch(`${proxy.url}/api/chat`, {
      method: "POST",
      body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "hi" }] })
    })
    const reader = res.body!.getReader()
    const first = await reader.read()
    expect(first.done).toBe(false)

    proxy.child.kill("SIGTERM")
    await proxy.waitForLine((l) => String(l.msg).startsWith("shutting down"))
    // No new connections while draining.
    await expect(fetch(`${proxy.url}/ping`)).rejects.toThrow()

    let text = new TextDecoder().decode(first.value)
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      text += new TextDecoder().decode(chunk.value)
    }
    const lines = text.trim().split("\n").map((l) => JSON.parse(l))
    expect(lines.at(-1)).toMatchObject({ done: true, done_reason: "stop" })

    const { code } = await proxy.exited
    expect(code).toBe(0)
    expect(await waitGone(pid)).toBe(true)
    // Order: drain first, Ollama after.
    expect(indexOf(proxy, "stopping ollama")).toBeGreaterThan(
      indexOf(proxy, "shutting down: no new connections, finishing the requests in flight")
    )
    expect(proxy.lines.find((l) => l.msg === "ollama stopped")).toMatchObject({ code: 0 })
  })

  it("kills an Ollama that ignores SIGTERM after OLLAMA_STOP_TIMEOUT", async () => {
    const proxy = await start({ FAKE_OLLAMA_IGNORE_SIGTERM: "1", OLLAMA_STOP_TIMEOUT: "500ms" })
    await proxy.waitForLine((l) => l.msg === "ollama is up")
    const pid = await childPid(proxy)
    const sent = Date.now()
    proxy.child.kill("SIGTERM")
    const { code } = await proxy.exited
    expect(code).toBe(0)
    expect(Date.now() - sent).toBeGreaterThanOrEqual(500)
    expect(await waitGone(pid)).toBe(true)
    expect(proxy.lines.find((l) => l.msg === "ollama did not stop in time, killing it")).toMatchObject({ level: "warn" })
    expect(proxy.lines.find((l) => l.msg === "ollama stopped")).toMatchObject({ signal: "SIGKILL" })
  })

  it("exits at once on a second SIGTERM, still killing the child", async () => {
    const proxy = await start({ FAKE_OLLAMA_IGNORE_SIGTERM: "1", OLLAMA_STOP_TIMEOUT: "1m" })
    await proxy.waitForLine((l) => l.msg === "ollama is up")
    const pid = await childPid(proxy)
    proxy.child.kill("SIGTERM")
    await proxy.waitForLine((l) => l.msg === "stopping ollama")
    proxy.child.kill("SIGTERM")
    const { code } = await proxy.exited
    expect(code).toBe(143)
    expect(await waitGone(pid)).toBe(true)
  })
})

describe("OLLAMA_MANAGED=false", () => {
  it("spawns nothing and tracks an Ollama that runs elsewhere", async () => {
    const fake = await startFakeOllama()
    const proxy = await startProxy({ OLLAMA_HOST: fake.url.replace("http://", ""), OLLAMA_BIN: join(dir, "no-such-ollama") })
    try {
      let answer = await ping(proxy.url)
      for (let i = 0; answer.status === 204 && i < 100; i++) {
        await new Promise((resolve) => setTimeout(resolve, 20))
        answer = await ping(proxy.url)
      }
      expect(answer.status).toBe(200)
      expect(answer.body.ollama).toEqual(expect.objectContaining({ state: "up", managed: false }))

      const port = fake.port
      await fake.close()
      // The proxy notices at the first refused connection.
      expect((await fetch(`${proxy.url}/api/tags`)).status).toBe(503)
      expect((await ping(proxy.url)).status).toBe(503)

      const again = await startFakeOllama({ port })
      try {
        let back = await ping(proxy.url)
        for (let i = 0; back.status !== 200 && i < 100; i++) {
          await new Promise((resolve) => setTimeout(resolve, 20))
          back = await ping(proxy.url)
        }
        expect(back.status).toBe(200)
      } finally {
        await again.close()
      }
    } finally {
      await proxy.close()
    }
  })
})
