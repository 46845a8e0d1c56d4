/**
 * No Docker engine runs here, so this checks what can be checked of the image: the Dockerfile's
 * inputs exist, its bases are pinned, and the one file it ships runs on its own, on the image's
 * own Node version (fetched from the npm registry, see scripts/node-runtime.mjs).
 */
import { execFileSync } from "node:child_process"
import { once } from "node:events"
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { NODE_FLAGS } from "../scripts/node-flags.mjs"
import { ensureNode, imageNodeVersion } from "../scripts/node-runtime.mjs"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { ndjson, open, raw, readToEnd } from "./support/http.js"
import { BUNDLE, ROOT, spawnProxy } from "./support/proxy.js"

const dockerfile = readFileSync(join(ROOT, "Dockerfile"), "utf8")
const instructions = dockerfile
  .replace(/\\\n/g, " ")
  .split("\n")
  .map((l) => l.trim())
  .filter((l) => l !== "" && !l.startsWith("#"))
const args = new Map(
  instructions.filter((l) => l.startsWith("ARG ") && l.includes("=")).map((l) => {
    const [name, value] = l.slice(4).split("=")
    return [name!, value!] as const
  })
)
const expand = (s: string) => s.replace(/\$\{(\w+)\}/g, (_, name: string) => args.get(name) ?? `<unset ${name}>`)

describe("Dockerfile", () => {
  it("builds on pinned images only", () => {
    const bases = instructions.filter((l) => l.startsWith("FROM ")).map((l) => expand(l.split(/\s+/)[1]!))
    expect(bases).toEqual(["node:24.22.3-bookworm-slim", "node:24.22.3-bookworm-slim", "ollama/ollama:0.32.15"])
    for (const base of bases) expect(base).toMatch(/:\d+\.\d+\.\d+/)
  })

  it("runs Node 24, the LTS line, which package.json's engines allow", () => {
    expect(imageNodeVersion()).toMatch(/^24\.\d+\.\d+$/)
    const engines = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).engines.node as string
    expect(engines).toContain(">=24")
  })

  it("copies only sources that exist and that .dockerignore lets into the context", () => {
    const allowed = readFileSync(join(ROOT, ".dockerignore"), "utf8").split("\n").filter((l) => l.startsWith("!"))
      .map((l) => l.slice(1).replace(/\/$/, ""))
    const copies = instructions.filter((l) => l.startsWith("COPY ") && !l.includes("--from="))
    expect(copies.length).toBeGreaterThan(0)
    for (const copy of copies) {
      const sources = copy.split(/\s+/).slice(1, -1)
      for (const source of sources) {
        expect(existsSync(join(ROOT, source)), source).toBe(true)
        expect(allowed, source).toContain(source.replace(/\/$/, ""))
      }
    }
  })

  it("ships the bundle the build stage makes, under tini, with Ollama on loopback", () => {
    expect(instructions).toContain("RUN npm run build")
    expect(instructions).toContain("COPY --from=build /src/dist/main.js /app/main.js")
    expect(existsSync(BUNDLE)).toBe(true)
    const entrypoint = instructions.find((l) => l.startsWith("ENTRYPOINT "))
    expect(JSON.parse(entrypoint!.slice("ENTRYPOINT ".length))).toEqual(["/usr/bin/tini", "--", "node", ...NODE_FLAGS, "/app/main.js"])
    expect(instructions.find((l) => l.startsWith("HEALTHCHECK"))).toContain("/ping")
    expect(instructions).toContain("EXPOSE 80")
    expect(dockerfile).toMatch(/OLLAMA_HOST=127\.0\.0\.1:11434/)
  })
})

describe("the V8 flags", () => {
  it("are the same wherever the proxy is started (scripts/node-flags.mjs)", () => {
    expect(NODE_FLAGS).toContain("--no-memory-reducer")
    const scripts = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).scripts as Record<string, string>
    expect(scripts.start).toBe(["node", ...NODE_FLAGS, "dist/main.js"].join(" "))
    // The Dockerfile's ENTRYPOINT is checked above; node refuses these flags in NODE_OPTIONS.
  })
})

describe("the bundle alone", () => {
  let dir: string
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "bundle-"))
    copyFileSync(BUNDLE, join(dir, "main.js"))
  })
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  it("starts with no node_modules, answers /ping and proxies a request", async () => {
    const fake = await startFakeOllama()
    const proxy = await spawnProxy(
      { OLLAMA_MANAGED: "false", OLLAMA_HOST: fake.url, AUTHORIZATION_APIKEY: "k", NODE_PATH: "" },
      { script: join(dir, "main.js"), cwd: dir }
    )
    try {
      await proxy.waitForLine((l) => l.msg === "ollama is up")
      expect((await raw(`${proxy.url}/ping`)).status).toBe(200)
      const tags = await raw(`${proxy.url}/api/tags`, { headers: { authorization: "Bearer k" } })
      expect(tags.status).toBe(200)
      expect(JSON.parse(tags.text).models.length).toBeGreaterThan(0)
    } finally {
      await proxy.kill()
      await fake.close()
    }
  })
})

describe("the bundle on the image's Node", () => {
  let node: string
  // The first run on a machine fetches the binary (~50 MB) from the npm registry; later runs find it cached.
  beforeAll(async () => {
    node = await ensureNode()
  }, 300_000)

  it("is the Node version the Dockerfile pins", () => {
    expect(execFileSync(node, ["--version"], { encoding: "utf8" }).trim()).toBe(`v${imageNodeVersion()}`)
  })

  it("answers /ping and streams a chat through, chunk by chunk", async () => {
    const fake = await startFakeOllama({ tokens: 6, tokenDelayMs: 30 })
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", OLLAMA_HOST: fake.url, AUTHORIZATION_APIKEY: "k" }, { node })
    try {
      await proxy.waitForLine((l) => l.msg === "ollama is up")
      expect((await raw(`${proxy.url}/ping`)).status).toBe(200)
      const { res } = await open(`${proxy.url}/api/chat`, {
        method: "POST",
        headers: { authorization: "Bearer k", "content-type": "application/json" },
        body: JSON.stringify({ model: "llama3.2", messages: [{ role: "user", content: "Hi" }] })
      })
      expect(res.statusCode).toBe(200)
      // The first token reaches the client while Ollama is still generating the rest.
      const [first] = (await once(res, "data")) as [Buffer]
      expect(fake.requests.find((r) => r.path === "/api/chat")?.completed).toBe(false)
      const rest = await readToEnd(res)
      const lines = ndjson(first.toString("utf8") + rest.body)
      expect(rest.complete).toBe(true)
      expect(lines).toHaveLength(7)
      expect(lines.at(-1)).toMatchObject({ done: true, eval_count: 6 })
      expect(fake.requests.find((r) => r.path === "/api/chat")?.headers.authorization).toBeUndefined()
    } finally {
      await proxy.kill()
      await fake.close()
    }
  })
})
