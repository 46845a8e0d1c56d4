/**
 * /ping, RunPod's health check: 204 while starting, 200 when ready, 503 when Ollama is down.
 * Answered from state only; never waits on Ollama.
 */
import { HttpServerResponse } from "@effect/platform"
import { Effect } from "effect"
import { OllamaHealth } from "../ollama/Health.js"

export const ping = Effect.gen(function*() {
  const health = yield* OllamaHealth
  const { state, since, version } = health.snapshot()
  if (state === "starting") return HttpServerResponse.empty({ status: 204 })
  const body = {
    status: state === "up" ? "ready" : "unhealthy",
    ollama: { state, since: new Date(since).toISOString(), ...(version === undefined ? {} : { version }) }
  }
  return HttpServerResponse.unsafeJson(body, { status: state === "up" ? 200 : 503 })
})
