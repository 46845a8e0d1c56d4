/**
 * The shutdown sequence comes from the order the layers are built in: the listeners drain, then
 * the consumers (usage records) flush, then Ollama is stopped.
 */
import { Effect, Layer, ManagedRuntime } from "effect"
import { afterEach, describe, expect, it, vi } from "vitest"
import { appWith } from "../src/App.js"
import { Environment } from "../src/Config.js"
import { ExchangeConsumers } from "../src/exchange/Exchange.js"
import { Server } from "../src/http/Server.js"
import { freePort } from "./support/http.js"
import { noLimitsAdmission } from "./support/layer.js"
import { waitGone } from "./support/processes.js"
import { FAKE_OLLAMA_BIN } from "./support/proxy.js"

afterEach(() => {
  vi.restoreAllMocks()
})

describe("the composed app", () => {
  it("drains, then flushes the consumers, then stops Ollama", async () => {
    const events: Array<Record<string, unknown>> = []
    // The app's own JSON log lines, read where they are written.
    vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
      for (const line of String(chunk).split("\n").filter(Boolean)) events.push(JSON.parse(line))
      return true
    })
    const consumers = Layer.scoped(
      ExchangeConsumers,
      Effect.acquireRelease(Effect.succeed([]), () => Effect.sync(() => events.push({ msg: "consumers flushed" })))
    ).pipe(Layer.merge(noLimitsAdmission))
    const runtime = ManagedRuntime.make(
      appWith(consumers).pipe(Layer.provide(Environment.layer({
        ...process.env,
        PORT: "0",
        HOST: "127.0.0.1",
        AUTHORIZATION_LOG_JSON: "true",
        OLLAMA_BIN: FAKE_OLLAMA_BIN,
        OLLAMA_HOST: `127.0.0.1:${await freePort()}`
      })))
    )
    await runtime.runPromise(Server)
    await runtime.dispose()
    vi.restoreAllMocks()

    const order = events.map((e) => String(e.msg)).filter((m) =>
      ["ollama started", "listening", "consumers flushed", "stopping ollama", "ollama stopped"].includes(m) ||
      m.startsWith("shutting down")
    )
    expect(order).toEqual([
      "ollama started",
      "listening",
      "shutting down: no new connections, finishing the requests in flight",
      "consumers flushed",
      "stopping ollama",
      "ollama stopped"
    ])
    expect(await waitGone(Number(events.find((e) => e.msg === "ollama started")!.pid))).toBe(true)
  })

  it("cannot be built without the admission of keys with limits: the type says so, and so does the start", async () => {
    const consumers = Layer.succeed(ExchangeConsumers, [])
    // @ts-expect-error: a service without it would let keys that have limits through unlimited
    const app = appWith(consumers)
    const runtime = ManagedRuntime.make(
      app.pipe(
        Layer.provide(Environment.layer({ PORT: "0", HOST: "127.0.0.1", OLLAMA_MANAGED: "false", AUTHORIZATION_LOG_LEVEL: "error" }))
      )
    )
    await expect(runtime.runPromise(Server)).rejects.toThrow(/app\/ExchangeAdmission/)
    await runtime.dispose()
  })
})
