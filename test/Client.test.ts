/**
 * OllamaClient's pull, warm and tags against the fake Ollama library: the shapes and failures
 * the Preloader relies on.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Either, Stream } from "effect"
import { configFromEnv } from "../src/Config.js"
import { OllamaClient } from "../src/ollama/Client.js"
import { type FakeOllama, startFakeOllama } from "./fake-ollama/server.mjs"

let fake: FakeOllama
beforeAll(async () => {
  fake = await startFakeOllama({ models: ["llama3.2", "nomic-embed-text"] })
})
afterAll(() => fake.close())

const withClient = <A, E>(f: (client: OllamaClient) => Effect.Effect<A, E>) =>
  Effect.flatMap(OllamaClient, f).pipe(
    Effect.provide(OllamaClient.Default),
    Effect.provide(configFromEnv({ OLLAMA_HOST: fake.url.replace("http://", "") }))
  )

const bodyOf = (path: string) => fake.requests.filter((r) => r.path === path).map((r) => JSON.parse(r.body.toString("utf8")))

describe("OllamaClient", () => {
  it.live("streams a pull's progress up to success", () =>
    Effect.gen(function*() {
      const lines = yield* withClient((c) => Stream.runCollect(c.pull("qwen3:0.6b"))).pipe(Effect.map(Chunk.toArray))
      expect(lines[0]).toEqual({ status: "pulling manifest" })
      expect(lines.at(-1)).toEqual({ status: "success" })
      expect(lines.some((l) => l.digest !== undefined && (l.total ?? 0) > 0)).toBe(true)
      expect(bodyOf("/api/pull").at(-1)).toEqual({ model: "qwen3:0.6b", stream: true })
    }))

  it.live("fails a pull of a model that does not exist with ModelNotFound", () =>
    Effect.gen(function*() {
      const result = yield* withClient((c) => Stream.runDrain(c.pull("no-such-model"))).pipe(Effect.either)
      expect(Either.isLeft(result) && result.left._tag).toBe("ModelNotFound")
    }))

  it.live("fails a pull that loses its connection with OllamaUnavailable", () =>
    Effect.gen(function*() {
      fake.set({ pullFailTimes: 1 })
      const result = yield* withClient((c) => Stream.runDrain(c.pull("all-minilm"))).pipe(Effect.either)
      expect(Either.isLeft(result) && result.left._tag).toBe("OllamaUnavailable")
    }))

  it.live("warms a chat model with generate and an embedding model with embed, with keep_alive", () =>
    Effect.gen(function*() {
      const [chat, embedding] = yield* withClient((c) => Effect.all([c.warm("llama3.2", -1), c.warm("nomic-embed-text", "30m")]))
      expect([chat, embedding]).toEqual(["generate", "embed"])
      expect(bodyOf("/api/generate")).toContainEqual({ model: "llama3.2", keep_alive: -1, stream: false })
      expect(bodyOf("/api/embed")).toContainEqual({ model: "nomic-embed-text", input: [], keep_alive: "30m" })
      expect(fake.loaded().sort()).toEqual(["llama3.2:latest", "nomic-embed-text:latest"])
    }))

  it.live("tells a missing model from a busy Ollama", () =>
    Effect.gen(function*() {
      const missing = yield* withClient((c) => c.warm("not-pulled", -1)).pipe(Effect.flip)
      expect(missing._tag).toBe("ModelNotFound")
      fake.set({ busy: true })
      const busy = yield* withClient((c) => c.warm("llama3.2", -1)).pipe(
        Effect.flip,
        Effect.ensuring(Effect.sync(() => fake.set({ busy: undefined })))
      )
      expect(busy).toMatchObject({ _tag: "OllamaError", status: 503, retryable: true })
    }))

  it.live("lists the models on disk with their sizes", () =>
    Effect.gen(function*() {
      const models = yield* withClient((c) => c.tags)
      expect(models.map((m) => m.name)).toEqual(expect.arrayContaining(["llama3.2:latest", "nomic-embed-text:latest"]))
      expect(models.every((m) => m.size > 0)).toBe(true)
    }))
})
