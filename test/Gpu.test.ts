/**
 * The GPU check: a worker whose preloaded model Ollama put (partly) on the CPU. End to end with
 * the built bundle supervising the fake `ollama` executable, which reports a model on the CPU when
 * it has no GPU or too little of one (FAKE_OLLAMA_VRAM, FAKE_OLLAMA_VRAM_FILE read at each start).
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, afterEach, describe, expect, it } from "vitest"
import { placementsOf, psName } from "../src/ollama/Gpu.js"
import { raw } from "./support/http.js"
import { scrape } from "./support/metrics.js"
import { type SpawnedProxy, spawnManaged } from "./support/proxy.js"

const KEY = "gpu-check-key-51c0"
const LLAMA_SIZE = 2019393189

const dir = mkdtempSync(join(tmpdir(), "gpu-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const running: Array<SpawnedProxy> = []
afterEach(async () => {
  await Promise.all(running.splice(0).map((proxy) => proxy.kill("SIGTERM")))
})

const start = async (env: Record<string, string>) => {
  const proxy = await spawnManaged({
    AUTHORIZATION_APIKEY: KEY,
    // The test reads the gauge from /metrics.
    AUTHORIZATION_DEFAULT_SCOPES: "inference,read,metrics",
    PRELOAD_MODEL: "llama3.2",
    ...env
  })
  running.push(proxy)
  return proxy
}

const ping = async (url: string, headers: Record<string, string> = {}) => {
  const res = await raw(`${url}/ping`, { headers })
  return { status: res.status, body: res.text === "" ? undefined : JSON.parse(res.text) }
}

/** Polls /ping until it answers `wanted`; returns every status seen on the way. */
const pingUntil = async (url: string, wanted: number, timeoutMs = 15_000) => {
  const seen: Array<number> = []
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const { status } = await ping(url)
    if (seen.at(-1) !== status) seen.push(status)
    if (status === wanted) return seen
    if (Date.now() > deadline) throw new Error(`/ping went ${seen.join(" -> ")}, never ${wanted}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

const offGpuLines = (proxy: SpawnedProxy) => proxy.lines.filter((l) => l.msg === "model is not entirely in GPU memory")

const vramRatio = async (url: string) => (await scrape(url, { "x-api-key": KEY })).value("ollama_model_vram_ratio", { model: "llama3.2" })

const restartOllama = async (proxy: SpawnedProxy) => {
  const started = () => proxy.lines.filter((l) => l.msg === "ollama started")
  const before = started().length
  process.kill(Number(started().at(-1)!.pid), "SIGKILL")
  await proxy.waitForLine(() => started().length > before)
}

describe("with REQUIRE_GPU=true", () => {
  it("a model on the CPU takes the worker out of routing, says why, and logs one error line with Ollama's devices", async () => {
    const proxy = await start({ REQUIRE_GPU: "true", FAKE_OLLAMA_VRAM: "0" })
    // Never 200 on the way: RunPod must not route a request to this worker even once.
    expect(await pingUntil(proxy.url, 503)).toEqual([204, 503])

    expect((await ping(proxy.url)).body).toEqual({
      status: "unhealthy",
      state: "up",
      reason: "a preloaded model is not entirely in GPU memory (REQUIRE_GPU=true)"
    })
    const detailed = await ping(proxy.url, { authorization: `Bearer ${KEY}` })
    expect(detailed.body.gpu).toMatchObject({
      required: true,
      state: "insufficient",
      models: [{ model: "llama3.2", size: LLAMA_SIZE, size_vram: 0, vram_ratio: 0 }],
      ollama_compute: [expect.objectContaining({ id: "cpu", library: "cpu" })]
    })

    const lines = offGpuLines(proxy)
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatchObject({
      level: "error",
      model: "llama3.2",
      size: LLAMA_SIZE,
      size_vram: 0,
      vram_ratio: 0,
      ollama_compute: [expect.objectContaining({ id: "cpu", library: "cpu", name: "cpu" })]
    })
    expect(await vramRatio(proxy.url)).toBe(0)
  })

  it("checks again after every restart of Ollama: a GPU that is gone after a crash takes the worker out", async () => {
    const vramFile = join(dir, "vram-restart")
    writeFileSync(vramFile, "22.5GiB")
    const proxy = await start({ REQUIRE_GPU: "true", FAKE_OLLAMA_VRAM_FILE: vramFile })
    expect(await pingUntil(proxy.url, 200)).toEqual([204, 200])
    expect(proxy.lines.find((l) => l.msg === "preloaded models are in GPU memory")).toMatchObject({ models: "llama3.2" })
    expect(await vramRatio(proxy.url)).toBe(1)
    expect(offGpuLines(proxy)).toEqual([])

    // The next start of Ollama finds no GPU.
    writeFileSync(vramFile, "0")
    await restartOllama(proxy)
    await pingUntil(proxy.url, 503)
    await proxy.waitForLine(() => offGpuLines(proxy).length === 1)
    expect(offGpuLines(proxy)[0]).toMatchObject({
      level: "error",
      model: "llama3.2",
      size_vram: 0,
      ollama_compute: [expect.objectContaining({ library: "cpu" })]
    })
    expect(await vramRatio(proxy.url)).toBe(0)

    // And back: the GPU returns with the next start, and so does the worker.
    writeFileSync(vramFile, "22.5GiB")
    await restartOllama(proxy)
    await pingUntil(proxy.url, 200)
    await proxy.waitForLine(() => proxy.lines.filter((l) => l.msg === "preloaded models are in GPU memory").length === 2)
    expect(await vramRatio(proxy.url)).toBe(1)
    expect(offGpuLines(proxy)).toHaveLength(1)
  })
})

describe("without REQUIRE_GPU", () => {
  it("a model partly on the CPU is a warning and a gauge, and the worker stays in routing", async () => {
    const proxy = await start({ FAKE_OLLAMA_VRAM: "1GiB" })
    await pingUntil(proxy.url, 200)
    await proxy.waitForLine(() => offGpuLines(proxy).length === 1)
    const ratio = Math.round((1024 ** 3 / LLAMA_SIZE) * 1000) / 1000
    expect(offGpuLines(proxy)[0]).toMatchObject({
      level: "warn",
      size: LLAMA_SIZE,
      size_vram: 1024 ** 3,
      vram_ratio: ratio,
      ollama_compute: [expect.objectContaining({ library: "CUDA", description: "NVIDIA L4", total: "1.0 GiB" })]
    })
    expect(await vramRatio(proxy.url)).toBe(ratio)
    expect((await ping(proxy.url)).status).toBe(200)
  })
})

describe("matching /api/ps to PRELOAD_MODEL", () => {
  it("reads a bare name as :latest, case-insensitively, and leaves out models not in memory", () => {
    expect([psName("llama3.2"), psName("Qwen3:0.6b"), psName("hf.co/org/repo:Q4_K_M"), psName("registry:5000/m")]).toEqual([
      "llama3.2:latest",
      "qwen3:0.6b",
      "hf.co/org/repo:q4_k_m",
      "registry:5000/m:latest"
    ])
    const running = [
      { name: "llama3.2:latest", model: "llama3.2:latest", size: 1000, size_vram: 250 },
      { name: "other:latest", model: "other:latest", size: 10, size_vram: 10 }
    ]
    expect(placementsOf(["llama3.2", "gone"], running)).toEqual([{ model: "llama3.2", size: 1000, size_vram: 250, vram_ratio: 0.25 }])
  })
})
