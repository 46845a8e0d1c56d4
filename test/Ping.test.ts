import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { ping } from "../src/http/Ping.js"
import { type HealthSnapshot, OllamaHealth } from "../src/ollama/Health.js"
import { Preloader, type PreloadSnapshot } from "../src/ollama/Preloader.js"
import { OllamaProcess, ProcessState } from "../src/ollama/Process.js"

const answer = (health: HealthSnapshot, preload: PreloadSnapshot, process: ProcessState = ProcessState.Unmanaged()) =>
  Effect.gen(function*() {
    const response = yield* ping
    const body = response.body._tag === "Uint8Array" ? JSON.parse(new TextDecoder().decode(response.body.body)) : undefined
    return { status: response.status, body }
  }).pipe(
    Effect.provide(Layer.mergeAll(
      Layer.succeed(OllamaHealth, OllamaHealth.make({ snapshot: () => health } as never)),
      Layer.succeed(Preloader, Preloader.make({ snapshot: () => preload })),
      Layer.succeed(OllamaProcess, OllamaProcess.make({ managed: true, current: () => process } as never))
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
        }
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
})
