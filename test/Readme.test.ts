/**
 * The README is the operator's guide: every variable the code reads is documented there, every
 * documented variable is read, and the files it tells people to copy exist.
 */
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { ROOT } from "./support/proxy.js"

const readme = readFileSync(join(ROOT, "README.md"), "utf8")

const sources = (dir: string): Array<string> =>
  readdirSync(dir).flatMap((name) => {
    const path = join(dir, name)
    return statSync(path).isDirectory() ? sources(path) : path.endsWith(".ts") ? [path] : []
  })

/** Our variables: the families the service reads, as string literals in src/. */
const OURS =
  /"((?:PORT|HOST)(?:_HEALTH)?|REQUIRE_GPU|HEALTH_CHECK_PATH|TRUSTED_PROXIES|MAX_CONNECTIONS|(?:OLLAMA|AUTHORIZATION|PRELOAD|USER_MODEL|WEBHOOK|SHUTDOWN|METRICS|OTEL|RUNPOD|REQUEST|MAX_CONNECTIONS|REDIS|LIMITS|QUEUE)_[A-Z0-9_]+)"/g
const readByCode = new Set(sources(join(ROOT, "src")).flatMap((file) => [...readFileSync(file, "utf8").matchAll(OURS)].map((m) => m[1]!)))

/** The first column of every table row in the README, as variable names. */
const documented = new Set(
  readme.split("\n").filter((line) => line.startsWith("| `")).flatMap((line) =>
    [...line.split("|")[1]!.matchAll(/`([A-Z][A-Z0-9_]*)(?:_<[A-Z]+>)?`/g)].map((m) => m[1]!)
  )
)

describe("README configuration", () => {
  it("documents every variable the code reads", () => {
    expect(readByCode.size).toBeGreaterThan(20)
    const missing = [...readByCode].filter((name) => !documented.has(name))
    expect(missing).toEqual([])
  })

  it("documents no variable the code does not read", () => {
    const configTable = readme.slice(readme.indexOf("## Configuration"), readme.indexOf("## Endpoints"))
    const names = [...configTable.matchAll(/^\| `([A-Z][A-Z0-9_]*)`/gm)].map((m) => m[1]!)
    expect(names.length).toBeGreaterThan(10)
    expect(names.filter((name) => !readByCode.has(name))).toEqual([])
  })

  it("points only at files that exist", () => {
    for (const [, target] of readme.matchAll(/\]\(((?!https?:|#)[^)]+)\)/g)) {
      expect(existsSync(join(ROOT, target!)), target).toBe(true)
    }
    expect(existsSync(join(ROOT, "deploy/otel-collector.yaml"))).toBe(true)
    expect(readFileSync(join(ROOT, "docker-compose.yml"), "utf8")).toContain("./deploy/otel-collector.yaml")
  })

  it("gives the two commands that work on a fresh machine", () => {
    expect(readme).toContain("npm ci && npm run demo")
    expect(readme).toContain("npm ci && npm test")
  })
})
