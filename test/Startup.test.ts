/**
 * Start-up as an operator meets it: the built bundle, real environment variables.
 */
import { once } from "node:events"
import { createServer } from "node:net"
import type { AddressInfo } from "node:net"
import { describe, expect, it } from "vitest"
import { raw } from "./support/http.js"
import { spawnProxy } from "./support/proxy.js"

describe("bad configuration", () => {
  it.each([
    [{ PORT: "abc" }, "PORT"],
    [{ AUTHORIZATION_APIKEY_TEAM: "  " }, "AUTHORIZATION_APIKEY_TEAM"],
    [{ USER_MODEL_METRICS_WEBHOOK_URL: "not a url" }, "USER_MODEL_METRICS_WEBHOOK_URL"],
    [{ OLLAMA_MANAGED: "perhaps" }, "OLLAMA_MANAGED"]
  ])("%o stops start-up with one line naming %s", async (env, variable) => {
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", ...env }, { waitForListening: false })
    const { code } = await proxy.exited
    expect(code).toBe(1)
    const lines = proxy.stderr().trim().split("\n")
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(new RegExp(`^ollama-authentication-proxy: invalid configuration: ${variable}: `))
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
  it("warns at start that every caller gets in, and /ping says 204 until Ollama first answers", async () => {
    const proxy = await spawnProxy({ OLLAMA_MANAGED: "false", OLLAMA_HOST: "127.0.0.1:9" })
    try {
      const warning = await proxy.waitForLine((l) => l.level === "warn")
      expect(warning.msg).toContain("lets every caller in")
      expect((await raw(`${proxy.url}/ping`)).status).toBe(204)
      const res = await raw(`${proxy.url}/api/tags`)
      expect(res.status).toBe(503)
      expect(JSON.parse(res.text)).toEqual({ error: "ollama is not available" })
    } finally {
      await proxy.kill()
    }
  })
})
