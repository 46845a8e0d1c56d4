/**
 * Start-up as an operator meets it: the built bundle, real environment variables.
 */
import { createHash } from "node:crypto"
import { once } from "node:events"
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { createServer as createHttpServer } from "node:http"
import { connect, createServer } from "node:net"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { startFakeOllama } from "./fake-ollama/server.mjs"
import { freePort, raw } from "./support/http.js"
import { spawnManaged, spawnProxy } from "./support/proxy.js"

/** Resolves once `condition` holds, checking every 20 ms (for counts kept by servers in this process). */
const until = async (condition: () => boolean, timeoutMs = 10_000) => {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("timed out")
    await new Promise((r) => setTimeout(r, 20))
  }
}

const sha256 = (text: string) => createHash("sha256").update(text).digest("hex")

describe("bad configuration", () => {
  it.each([
    [{ PORT: "abc" }, "PORT"],
    [{ AUTHORIZATION_APIKEY_TEAM: "  " }, "AUTHORIZATION_APIKEY_TEAM"],
    [{ USER_MODEL_METRICS_WEBHOOK_URL: "not a url" }, "USER_MODEL_METRICS_WEBHOOK_URL"],
    [{ OLLAMA_MANAGED: "perhaps" }, "OLLAMA_MANAGED"],
    [{ AUTHORIZATION_DEFAULT_SCOPES: "inference,reed" }, "AUTHORIZATION_DEFAULT_SCOPES"],
    [{ AUTHORIZATION_APIKEY_A: "same-key-0123", AUTHORIZATION_APIKEY_B: "same-key-0123" }, "AUTHORIZATION_APIKEY_B"]
  ])("%o stops start-up with one line naming %s", async (env, variable) => {
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", ...env }, { waitForListening: false })
    const { code } = await proxy.exited
    expect(code).toBe(1)
    const lines = proxy.stderr().trim().split("\n")
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(new RegExp(`^ollama-authentication-proxy: invalid configuration: ${variable}: `))
  })

  it.each([
    [
      "a duplicate key in the environment, as given or as its sha256",
      { AUTHORIZATION_APIKEY_ALICE: "shared-key-0123", AUTHORIZATION_APIKEY_BOB: `sha256:${sha256("shared-key-0123")}` },
      "invalid configuration: AUTHORIZATION_APIKEY_BOB: the same key as AUTHORIZATION_APIKEY_ALICE: give each key once"
    ],
    [
      "a near miss in AUTHORIZATION_DEFAULT_SCOPES",
      { AUTHORIZATION_DEFAULT_SCOPES: "inference,reed" },
      `invalid configuration: AUTHORIZATION_DEFAULT_SCOPES: "reed" is not a scope (inference, read, manage, metrics, web, or all); did you mean "read"?`
    ]
  ])("%s is one line in the user's words", async (_, env, line) => {
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", ...env }, { waitForListening: false })
    expect((await proxy.exited).code).toBe(1)
    expect(proxy.stderr()).toBe(`ollama-authentication-proxy: ${line}\n`)
  })

  describe("is read and checked before Ollama is started", () => {
    const keyFile = (text: string) => {
      const file = join(mkdtempSync(join(tmpdir(), "keys-")), "keys.yaml")
      writeFileSync(file, text)
      return file
    }
    const starts = () => join(mkdtempSync(join(tmpdir(), "starts-")), "starts")

    it.each([
      [
        "a near miss in the key file",
        (file: string) => `key file ${file}: keys[0].scope: unknown field; did you mean "scopes"?`,
        "keys:\n  - name: alice\n    key: sk-alice-0123\n    scope: [inference]\n",
        {}
      ],
      [
        "a value of the wrong type in the key file",
        (file: string) => `key file ${file}: keys[0].scopes: a list like [inference, read], not a string`,
        "keys:\n  - name: alice\n    key: sk-alice-0123\n    scopes: inference\n",
        {}
      ],
      [
        "a key given twice in the environment",
        () => "invalid configuration: AUTHORIZATION_APIKEY_B: the same key as AUTHORIZATION_APIKEY_A: give each key once",
        "keys: []\n",
        { AUTHORIZATION_APIKEY_A: "same-key-0123", AUTHORIZATION_APIKEY_B: "same-key-0123" }
      ]
    ])("%s: one line on stderr, and `ollama serve` never ran", async (_, line, text, env) => {
      const file = keyFile(text)
      const trace = starts()
      const proxy = await spawnManaged({ AUTHORIZATION_KEYS_FILE: file, FAKE_OLLAMA_STARTS_FILE: trace, ...env }, {
        waitForListening: false
      })
      expect((await proxy.exited).code).toBe(1)
      expect(proxy.stderr()).toBe(`ollama-authentication-proxy: ${line(file)}\n`)
      expect(existsSync(trace)).toBe(false)
      expect(proxy.lines.filter((l) => l.source === "ollama" || /ollama/.test(String(l.msg)))).toEqual([])
    })

    it("while a good key file lets the same command start Ollama (the trace the other runs lack)", async () => {
      const trace = starts()
      const proxy = await spawnManaged({
        AUTHORIZATION_KEYS_FILE: keyFile("keys:\n  - name: alice\n    key: sk-alice-0123\n    scopes: [inference]\n"),
        FAKE_OLLAMA_STARTS_FILE: trace
      })
      try {
        // Up: it answered, so it had started (and written its trace) before.
        await proxy.waitForLine((l) => l.msg === "ollama is up")
        expect(readFileSync(trace, "utf8")).toMatch(/^\d+\n$/)
      } finally {
        await proxy.kill()
      }
    })
  })

  it("names the address when the port is taken", async () => {
    const blocker = createServer().listen(0, "127.0.0.1")
    await once(blocker, "listening")
    const port = (blocker.address() as AddressInfo).port
    try {
      const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", PORT: String(port) }, { waitForListening: false })
      expect((await proxy.exited).code).toBe(1)
      expect(proxy.stderr().trim()).toBe(
        `ollama-authentication-proxy: cannot listen on 127.0.0.1:${port}: listen EADDRINUSE: address already in use 127.0.0.1:${port}`
      )
    } finally {
      blocker.close()
    }
  })
})

describe("an open proxy", () => {
  it("warns at start that every caller gets in, and /ping says 503 while an Ollama not its own does not answer", async () => {
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", OLLAMA_HOST: "127.0.0.1:9" })
    try {
      const warning = await proxy.waitForLine((l) => l.level === "warn")
      expect(warning.msg).toContain("lets every caller in")
      await proxy.waitForLine((l) => l.msg === "ollama is not answering")
      const ping = await raw(`${proxy.url}/ping`)
      expect(ping.status).toBe(503)
      // The details are for a key; on an open proxy everyone has them.
      expect(JSON.parse(ping.text)).toMatchObject({
        status: "unhealthy",
        state: "down",
        reason: "ollama is not answering",
        ollama: { state: "down", url: "http://127.0.0.1:9", reason: "connect ECONNREFUSED 127.0.0.1:9", managed: false }
      })
      const res = await raw(`${proxy.url}/api/tags`)
      expect(res.status).toBe(503)
      expect(res.headers["retry-after"]).toBe("5")
      expect(JSON.parse(res.text)).toEqual({ error: "ollama is not available" })
    } finally {
      await proxy.kill()
    }
  })
})

describe("an Ollama that does not answer (OLLAMA_MANAGED=false)", () => {
  it("one log line per change saying where it was looked for and what failed, the same reason in /ping's keyed details, and a line when it answers", async () => {
    const port = await freePort()
    const origin = `http://127.0.0.1:${port}`
    const key = "health-key-0123"
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", OLLAMA_HOST: origin, AUTHORIZATION_APIKEY: key })
    const changes = () => proxy.lines.filter((l) => l.service === "OllamaHealth")
    const details = async () => {
      const res = await raw(`${proxy.url}/ping`, { headers: { authorization: `Bearer ${key}` } })
      return { status: res.status, ollama: JSON.parse(res.text).ollama }
    }
    let squatter: { close: () => void; probes: number } | undefined
    /** Something else on Ollama's port: answers every request with `status`, or never (undefined). */
    const squat = async (status: number | undefined) => {
      squatter?.close()
      const server = createHttpServer((_, res) => {
        state.probes++
        if (status !== undefined) res.writeHead(status).end()
      })
      const state = {
        probes: 0,
        close: () => {
          server.closeAllConnections()
          server.close()
        }
      }
      server.listen(port, "127.0.0.1")
      await once(server, "listening")
      squatter = state
      return state
    }
    try {
      const refused = await proxy.waitForLine((l) => l.msg === "ollama is not answering")
      expect(refused).toMatchObject({ level: "warn", ollama: origin, reason: `connect ECONNREFUSED 127.0.0.1:${port}` })
      expect(await details()).toMatchObject({ status: 503, ollama: { state: "down", url: origin, reason: refused.reason } })

      // Ten probes answered 404: one more line.
      const notFound = await squat(404)
      await until(() => notFound.probes >= 10)
      expect(changes().map((l) => l.reason)).toEqual([refused.reason, "GET / answered 404"])
      expect((await details()).ollama.reason).toBe("GET / answered 404")

      // A server that never answers: a timeout, said once.
      const silent = await squat(undefined)
      await proxy.waitForLine((l) => l.reason === "no answer to GET / within 2s (timeout)")
      await until(() => silent.probes >= 2)
      expect(changes().map((l) => l.reason)).toEqual([refused.reason, "GET / answered 404", "no answer to GET / within 2s (timeout)"])

      squatter?.close()
      squatter = undefined
      const ollama = await startFakeOllama({ port })
      try {
        const up = await proxy.waitForLine((l) => l.msg === "ollama is up")
        expect(up).toMatchObject({ level: "info", ollama: origin, version: "0.32.15" })
        // Between the silent server's end and Ollama, refusals (or a cut probe) again: each said once.
        const said = changes().map((l) => `${l.msg}: ${l.reason}`)
        expect(said.filter((line, i) => line === said[i - 1])).toEqual([])
        expect(said.at(-1)).toBe("ollama is up: undefined")
        const ready = await details()
        expect(ready.status).toBe(200)
        expect(ready.ollama.reason).toBeUndefined()
      } finally {
        await ollama.close()
      }
    } finally {
      squatter?.close()
      await proxy.kill()
    }
  })
})

describe("a client that starts with the proxy (docker compose)", () => {
  const KEY = "compose-key-0123456789"

  /**
   * Tries the port every millisecond until it opens, and sends `GET /api/tags` on the first
   * connection that succeeds; resolves with the status and body, and calls `sent` once it is sent.
   */
  const firstRequest = (port: number, sent: () => void = () => {}) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const attempt = () => {
        const socket = connect(port, "127.0.0.1")
        socket.once("error", (error: NodeJS.ErrnoException) => {
          socket.destroy()
          if (error.code === "ECONNREFUSED") setTimeout(attempt, 1)
          else reject(error)
        })
        socket.once("connect", () => {
          socket.write(`GET /api/tags HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${KEY}\r\nConnection: close\r\n\r\n`)
          sent()
          let text = ""
          socket.setEncoding("utf8").on("data", (chunk: string) => (text += chunk))
          socket.on("end", () => resolve({ status: Number(text.slice(9, 12)), body: text.slice(text.indexOf("\r\n\r\n") + 4) }))
        })
      }
      attempt()
    })

  it.each([
    ["answering already", false],
    ["listening, still starting up (it answers 300 ms after the first request)", true]
  ])("is served on its first request the moment the port opens, with Ollama %s", async (_, initializing) => {
    let ready = () => {}
    const ollama = await startFakeOllama(initializing ? { ready: new Promise<void>((resolve) => (ready = resolve)) } : {})
    const port = await freePort()
    const proxy = await spawnProxy(
      { PORT: String(port), OLLAMA_MANAGED: "false", OLLAMA_HOST: ollama.url, AUTHORIZATION_APIKEY: KEY },
      { waitForListening: false }
    )
    try {
      const answer = await firstRequest(port, () => setTimeout(ready, 300))
      expect(answer.status).toBe(200)
      expect(JSON.parse(answer.body).models.map((m: { name: string }) => m.name)).toContain("llama3.2:latest")
    } finally {
      await proxy.kill()
      await ollama.close()
    }
  })
})
