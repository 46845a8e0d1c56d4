/**
 * No Docker engine runs here, so this checks what can be checked of the image: the Dockerfile's
 * inputs exist, its bases are pinned, and the one file it ships runs on its own.
 */
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { NODE_FLAGS } from "../scripts/node-flags.mjs"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { raw } from "./support/http.js"
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
    expect(bases).toEqual(["node:20.20.2-bookworm-slim", "node:20.20.2-bookworm-slim", "ollama/ollama:0.32.15"])
    for (const base of bases) expect(base).toMatch(/:\d+\.\d+\.\d+/)
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
