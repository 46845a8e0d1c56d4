/**
 * Which local model names run on ollama.com: Ollama lists a model created or copied from a cloud
 * model with its `remote_host` (server/routes.go `ListHandler`), and runs it on the operator's
 * account whatever it is called. The key rules treat those as cloud models (src/keys/Models.ts).
 *
 * The list is read from `GET /api/tags` once Ollama answers, every REFRESH, and after each request
 * that may change it (a `manage` request: create, copy, pull, delete...): until that read is done,
 * requests that name a model wait for it, so a model made remote by one request cannot be used as
 * local by the next. Only a key with `manage` can make such a model; one made through another
 * worker sharing the model volume is seen within REFRESH.
 */
import { Duration, Effect, Layer, Runtime, Schedule } from "effect"
import { RemoteModelList } from "../exchange/Exchange.js"
import { normalizeModel } from "../keys/Models.js"
import { OllamaClient } from "./Client.js"
import { OllamaHealth } from "./Health.js"

const REFRESH = Duration.seconds(60)

export const RemoteModelsLive = Layer.scoped(
  RemoteModelList,
  Effect.gen(function*() {
    const client = yield* OllamaClient
    const health = yield* OllamaHealth
    let remote: ReadonlySet<string> = new Set()
    let pending: Promise<void> | undefined
    const read = client.tags.pipe(
      Effect.tap((models) =>
        Effect.sync(() => {
          remote = new Set(models.filter((m) => m.remote_host !== undefined && m.remote_host !== "").map((m) => normalizeModel(m.name)))
        })
      ),
      Effect.catchAll((error) =>
        Effect.logDebug("the list of remote models was not read").pipe(Effect.annotateLogs({ error: error.message }))
      ),
      Effect.asVoid
    )
    const runPromise = Runtime.runPromise(yield* Effect.runtime<never>())
    yield* health.awaitUp.pipe(Effect.zipRight(read.pipe(Effect.repeat(Schedule.spaced(REFRESH)))), Effect.forkScoped)
    return {
      isRemote: (name: string) => remote.has(name),
      pending: () => pending,
      changed: () => {
        const done: Promise<void> = runPromise(read).finally(() => {
          if (pending === done) pending = undefined
        })
        pending = done
      }
    }
  })
).pipe(Layer.provide(OllamaClient.Default), Layer.provide(OllamaHealth.Default))
