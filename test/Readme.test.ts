/**
 * The README is the operator's guide: every variable the code reads is documented there, every
 * documented variable is read, the files it tells people to copy exist, and its commands run.
 */
import { spawn } from "node:child_process"
import { once } from "node:events"
import { existsSync, readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { CONFIG_VARIABLES } from "../src/Config.js"
import { freePort, ndjson } from "./support/http.js"
import { isAlive, waitGone } from "./support/processes.js"
import { ROOT, untilReady } from "./support/proxy.js"
import { makeSignal } from "./support/signal.js"

const readme = readFileSync(join(ROOT, "README.md"), "utf8")

/**
 * The variables the service reads, as its slices declare them (src/Config.ts: each slice's list is
 * made from its readers, and test/Config.test.ts checks each reads exactly those). A family read by
 * prefix (`AUTHORIZATION_APIKEY*`) is documented under its prefix (`AUTHORIZATION_APIKEY_<NAME>`).
 */
const readByCode = new Set(CONFIG_VARIABLES.map((name) => name.replace(/\*$/, "")))

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
    // A family is documented as one: `AUTHORIZATION_APIKEY_<NAME>`.
    const families = CONFIG_VARIABLES.filter((name) => name.endsWith("*")).map((name) => name.slice(0, -1))
    expect(families.length).toBeGreaterThan(0)
    expect(families.filter((prefix) => !readme.includes(`\`${prefix}_<`))).toEqual([])
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

  it("keeps the configuration table's cells to one line; what does not fit is in paragraphs below it", () => {
    const configTable = readme.slice(readme.indexOf("## Configuration"), readme.indexOf("## Endpoints"))
    const rows = configTable.split("\n").filter((line) => line.startsWith("| `"))
    expect(rows.length).toBeGreaterThan(30)
    expect(rows.filter((row) => row.split("|")[3]!.trim().length > 100)).toEqual([])
  })

  it("reads as a manual: what it is, run it, test it, deploy (RunPod first), then the reference", () => {
    const headings = [...readme.matchAll(/^#{2,3} (.+)$/gm)].map((m) => m[1]!)
    const order = [
      "Run it",
      "Test it",
      "Deploy",
      "RunPod (load-balanced serverless endpoint)",
      "Docker (the image)",
      "Kubernetes",
      "Configuration",
      "Keys",
      "Limits",
      "Usage records and the webhook",
      "Observability",
      "Layout"
    ]
    const at = order.map((heading) => headings.indexOf(heading))
    expect(at.filter((i) => i < 0)).toEqual([])
    expect(at).toEqual([...at].sort((a, b) => a - b))
    // Its commands come before the reference: the demo, the fake, npm start, in that order.
    const run = readme.slice(readme.indexOf("## Run it"), readme.indexOf("## Test it"))
    const commands = ["npm run demo", "npm run start:fake", "npm start"].map((command) => run.indexOf(command))
    expect(commands.every((i, n) => i >= 0 && (n === 0 || i > commands[n - 1]!))).toBe(true)
  })

  it("leaves the figures to bench/README.md, and no internal issue numbers in either", () => {
    expect(readme).toContain("](bench/README.md)")
    expect(readme).not.toMatch(/^## Performance/m)
    const bench = readdirSync(join(ROOT, "bench")).filter((name) => /\.(mjs|md|lua)$/.test(name))
    for (
      const [name, text] of [
        ["README.md", readme],
        ...bench.map((name) => [`bench/${name}`, readFileSync(join(ROOT, "bench", name), "utf8")])
      ]
    ) {
      expect(text!.match(/\bissues? \d+/gi), name).toBeNull()
    }
  })

  it("names only npm scripts that exist and files that exist", () => {
    const scripts = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).scripts as Record<string, string>
    const named = [...readme.matchAll(/npm run ([\w:-]+)/g)].map((m) => m[1]!)
    expect(named).toContain("start:fake")
    expect(named.filter((name) => scripts[name] === undefined)).toEqual([])
    const files = [...readme.matchAll(/`node ((?:bench|scripts)\/[\w.-]+\.mjs)/g)].map((m) => m[1]!)
    expect(files.filter((file) => !existsSync(join(ROOT, file)))).toEqual([])
  })
})

describe("the README's run on the fake Ollama", () => {
  /** The shell block that runs `npm run start:fake`, as a reader copies it. */
  const block = readme.split("```sh\n").map((b) => b.slice(0, b.indexOf("```"))).find((b) => b.includes("npm run start:fake"))!

  it("is the built service on the bundled fake: its chat answers with the key the README sets", async () => {
    expect(block).toContain("npm run build")
    const command = block.split("\n").find((line) => line.endsWith("npm run start:fake"))!
    const env = Object.fromEntries([...command.matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1]!, m[2]!]))
    const curl = /curl -N http:\/\/localhost:(\d+)(\S+) -H '([^:]+): ([^']+)' \\\n\s*-d '([^']+)'/.exec(block)!
    const [, port, path, header, value, body] = curl
    expect(env.PORT).toBe(port)
    // The README's port and Ollama's may be taken on this machine: free ones, everything else as written.
    const free = String(await freePort())
    const npm = spawn("npm", ["run", "start:fake"], {
      cwd: ROOT,
      env: { ...process.env, ...env, PORT: free, HOST: "127.0.0.1", OLLAMA_HOST: `127.0.0.1:${await freePort()}` },
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
    try {
      const url = `http://127.0.0.1:${free}`
      await changed.until(() => /msg=listening/.test(output) || undefined, 30_000, () => `it never listened:\n${output}`)
      await untilReady(url)
      const res = await fetch(`${url}${path}`, { method: "POST", headers: { [header!]: value! }, body: body! })
      expect(res.status).toBe(200)
      const lines = ndjson(await res.text())
      expect(lines.at(-1)).toMatchObject({ model: "llama3.2", done: true })
      expect(lines.map((l) => (l.message as { content: string }).content).join("")).toContain("fake Ollama")
      // The fake, started by the proxy as its Ollama, logged through it.
      expect(output).toMatch(/msg="Listening on 127\.0\.0\.1:\d+ \(version [\d.]+\)" source=ollama/)
      expect((await fetch(`${url}${path}`, { method: "POST", body: body! })).status).toBe(401)
    } finally {
      process.kill(-npm.pid!, "SIGTERM")
      await once(npm, "exit")
    }
    // Stopping it stops the fake too (in a process group of its own, as the proxy starts Ollama).
    const fake = Number(/msg="ollama started" .*\bpid=(\d+)/.exec(output)![1])
    expect(await waitGone(fake)).toBe(true)
    expect(isAlive(npm.pid!)).toBe(false)
  })
})
