import { HttpServerRequest } from "@effect/platform"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { configFromEnv } from "../src/Config.js"
import { ping } from "../src/http/Ping.js"
import { ApiKeys } from "../src/keys/ApiKeys.js"
import { GpuCheck, type GpuSnapshot, holdsBack, keepsOut } from "../src/ollama/Gpu.js"
import { type HealthSnapshot, OllamaHealth } from "../src/ollama/Health.js"
import { Preloader, type PreloadSnapshot } from "../src/ollama/Preloader.js"
import { OllamaProcess, ProcessState } from "../src/ollama/Process.js"

const KEY = "ping-key-0123"
const withKey = { authorization: `Bearer ${KEY}` }

const answer = (
  health: HealthSnapshot,
  preload: PreloadSnapshot,
  process: ProcessState = ProcessState.Unmanaged(),
  headers: Record<string, string> = withKey,
  env: Record<string, string> = { AUTHORIZATION_APIKEY: KEY },
  gpu: { required: boolean; snapshot: GpuSnapshot } = { required: false, snapshot: { state: "none", models: [] } }
) =>
  Effect.gen(function*() {
    const response = yield* ping
    const body = response.body._tag === "Uint8Array" ? JSON.parse(new TextDecoder().decode(response.body.body)) : undefined
    return { status: response.status, body }
  }).pipe(
    Effect.provide(Layer.mergeAll(
      Layer.succeed(OllamaHealth, OllamaHealth.make({ snapshot: () => health, origin: "http://127.0.0.1:11434" } as never)),
      Layer.succeed(Preloader, Preloader.make({ snapshot: () => preload } as never)),
      Layer.succeed(
        GpuCheck,
        GpuCheck.make({
          required: gpu.required,
          snapshot: () => gpu.snapshot,
          failing: () => keepsOut(gpu.required, gpu.snapshot),
          pending: () => holdsBack(gpu.required, gpu.snapshot)
        })
      ),
      Layer.succeed(
        OllamaProcess,
        OllamaProcess.make(
          { managed: process._tag !== "Unmanaged", current: () => process, computeDevices: () => [{ id: "cpu", library: "cpu" }] } as never
        )
      ),
      Layer.succeed(HttpServerRequest.HttpServerRequest, HttpServerRequest.fromWeb(new Request("http://worker/ping", { headers }))),
      ApiKeys.Default.pipe(Layer.provide(configFromEnv(env)))
    ))
  )

const done: PreloadSnapshot = { state: "done", models: [{ model: "a", state: "ready", warmedWith: "generate" }] }

describe("/ping", () => {
  it.effect("is 204 while Ollama has never answered", () =>
    Effect.gen(function*() {
      const { body, status } = yield* answer({ state: "starting", since: 0 }, { state: "waiting", models: [] })
      expect(status).toBe(204)
      expect(body).toBeUndefined()
    }))

  it.effect("is 503 saying why while an Ollama that is not ours fails to answer; 204 while ours starts", () =>
    Effect.gen(function*() {
      const refused = { state: "starting", since: 0, reason: "connect ECONNREFUSED 127.0.0.1:11434" } as const
      const keyless = yield* answer(refused, { state: "waiting", models: [] }, ProcessState.Unmanaged(), {})
      expect(keyless).toEqual({ status: 503, body: { status: "unhealthy", state: "down", reason: "ollama is not answering" } })
      const keyed = yield* answer(refused, { state: "waiting", models: [] })
      expect(keyed.status).toBe(503)
      expect(keyed.body.ollama).toEqual({
        state: "down",
        since: "1970-01-01T00:00:00.000Z",
        url: "http://127.0.0.1:11434",
        reason: "connect ECONNREFUSED 127.0.0.1:11434",
        managed: false
      })
      // Our own child refuses connections until it listens: that is its start.
      const starting = yield* answer(refused, { state: "waiting", models: [] }, ProcessState.Running({ pid: 42, since: 0, restarts: 0 }))
      expect(starting.status).toBe(204)
      // Down after having been up, managed: the reason in the details too.
      const down = yield* answer(
        { state: "down", since: 0, reason: "GET / answered 500" },
        done,
        ProcessState.Running({ pid: 42, since: 0, restarts: 0 })
      )
      expect([down.status, down.body.ollama.reason, down.body.ollama.url]).toEqual([503, "GET / answered 500", "http://127.0.0.1:11434"])
    }))

  it.effect("is 204 while the preload runs", () =>
    Effect.gen(function*() {
      const { status } = yield* answer({ state: "up", since: 0 }, {
        state: "running",
        models: [{ model: "a", state: "pulling", percent: 40 }]
      })
      expect(status).toBe(204)
    }))

  it.effect("is 200 with the state when Ollama answers and the preload is over", () =>
    Effect.gen(function*() {
      const { body, status } = yield* answer(
        { state: "up", since: 0, version: "0.32.15" },
        { state: "done", models: [...done.models, { model: "nope", state: "failed", error: "model \"nope\" not found" }] },
        ProcessState.Running({ pid: 42, since: 0, restarts: 1 })
      )
      expect(status).toBe(200)
      expect(body).toEqual({
        status: "ready",
        state: "up",
        ollama: {
          state: "up",
          since: "1970-01-01T00:00:00.000Z",
          version: "0.32.15",
          managed: true,
          process: "running",
          pid: 42,
          restarts: 1
        },
        preload: {
          state: "done",
          ready: 1,
          total: 2,
          models: [
            { model: "a", state: "ready", warmedWith: "generate" },
            { model: "nope", state: "failed", error: "model \"nope\" not found" }
          ],
          failures: [{ model: "nope", error: "model \"nope\" not found" }]
        },
        gpu: { required: false, state: "none", models: [], ollama_compute: [{ id: "cpu", library: "cpu" }] }
      })
    }))

  it.effect("is 503 when Ollama is down after having been up, preload or not", () =>
    Effect.gen(function*() {
      const crashed = ProcessState.Exited({ code: null, signal: "SIGKILL", at: 1000, restarts: 0 })
      const { body, status } = yield* answer({ state: "down", since: 0 }, { state: "running", models: [] }, crashed)
      expect(status).toBe(503)
      expect(body.status).toBe("unhealthy")
      expect(body.ollama).toMatchObject({ state: "down", process: "restarting", last_exit: { code: null, signal: "SIGKILL" } })
    }))

  it.effect("tells a caller without a valid key the status and state only, with the same status code", () =>
    Effect.gen(function*() {
      const up = { state: "up", since: 0, version: "0.32.15" } as const
      const preload: PreloadSnapshot = { state: "done", models: [{ model: "secret-model", state: "failed", error: "x" }] }
      const running = ProcessState.Running({ pid: 42, since: 0, restarts: 0 })
      for (const headers of [{}, { authorization: "Bearer wrong" }, { "x-api-key": "wrong" }]) {
        const { body, status } = yield* answer(up, preload, running, headers)
        expect(status).toBe(200)
        expect(body).toEqual({ status: "ready", state: "up" })
      }
      const down = yield* answer({ state: "down", since: 0 }, preload, running, {})
      expect(down.status).toBe(503)
      expect(down.body).toEqual({ status: "unhealthy", state: "down", reason: "ollama is not answering" })
      expect(JSON.stringify(down.body)).not.toMatch(/secret-model|42|0\.32/)
      // With the key, RunPod's own bearer beside it: the details.
      const keyed = yield* answer(up, preload, running, { authorization: "Bearer rpa_RUNPOD", "x-api-key": KEY })
      expect(keyed.body.ollama).toMatchObject({ version: "0.32.15", pid: 42 })
    }))

  it.effect("gives the details to everyone on an open proxy", () =>
    Effect.gen(function*() {
      const { body } = yield* answer({ state: "up", since: 0, version: "0.32.15" }, done, undefined, {}, {})
      expect(body.ollama.version).toBe("0.32.15")
    }))

  describe("with REQUIRE_GPU", () => {
    const up = { state: "up", since: 0, version: "0.32.15" } as const
    const running = ProcessState.Running({ pid: 42, since: 0, restarts: 0 })
    const onCpu: GpuSnapshot = {
      state: "insufficient",
      checkedAt: 0,
      models: [{ model: "a", size: 2_000, size_vram: 0, vram_ratio: 0 }]
    }
    const required = (snapshot: GpuSnapshot) => ({ required: true, snapshot })
    const env = { AUTHORIZATION_APIKEY: KEY }

    it.effect("is 204 after the preload until the check has looked", () =>
      Effect.gen(function*() {
        const { status } = yield* answer(up, done, running, {}, env, required({ state: "pending", models: [] }))
        expect(status).toBe(204)
      }))

    it.effect("is 503 with the reason when a model is on the CPU; the details need a key", () =>
      Effect.gen(function*() {
        const keyless = yield* answer(up, done, running, {}, env, required(onCpu))
        expect(keyless.status).toBe(503)
        expect(keyless.body).toEqual({
          status: "unhealthy",
          state: "up",
          reason: "a preloaded model is not entirely in GPU memory (REQUIRE_GPU=true)"
        })
        const keyed = yield* answer(up, done, running, withKey, env, required(onCpu))
        expect(keyed.status).toBe(503)
        expect(keyed.body.gpu).toEqual({
          required: true,
          state: "insufficient",
          checked_at: "1970-01-01T00:00:00.000Z",
          models: [{ model: "a", size: 2_000, size_vram: 0, vram_ratio: 0 }],
          ollama_compute: [{ id: "cpu", library: "cpu" }]
        })
      }))

    it.effect("is 503 when /api/ps could not be read, 200 when all is in GPU memory", () =>
      Effect.gen(function*() {
        const unknown = yield* answer(up, done, running, {}, env, required({ state: "unknown", models: [], error: "x" }))
        expect([unknown.status, unknown.body.reason]).toEqual([
          503,
          "cannot tell whether the preloaded models are in GPU memory (REQUIRE_GPU=true)"
        ])
        const ok = yield* answer(up, done, running, {}, env, required({ state: "ok", checkedAt: 0, models: [] }))
        expect(ok.status).toBe(200)
      }))

    it.effect("without it, a model on the CPU shows in the details only", () =>
      Effect.gen(function*() {
        const { body, status } = yield* answer(up, done, running, withKey, env, { required: false, snapshot: onCpu })
        expect(status).toBe(200)
        expect(body.gpu).toMatchObject({ required: false, state: "insufficient" })
      }))
  })
})
