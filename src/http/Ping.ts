/**
 * /ping, RunPod's health check: 204 while initializing (Ollama has not answered yet, or the
 * preload runs), 200 when Ollama answers and the preload is over, 503 when Ollama is down after
 * having been up. Answered from state only; never waits on Ollama.
 */
import { HttpServerResponse } from "@effect/platform"
import { Effect } from "effect"
import { OllamaHealth } from "../ollama/Health.js"
import { Preloader } from "../ollama/Preloader.js"
import { OllamaProcess, type ProcessState } from "../ollama/Process.js"

const processBody = (process: ProcessState) => {
  switch (process._tag) {
    case "Unmanaged":
      return { managed: false }
    case "Starting":
      return { managed: true, process: "starting", restarts: process.restarts }
    case "Running":
      return { managed: true, process: "running", pid: process.pid, restarts: process.restarts }
    case "Exited":
      return {
        managed: true,
        process: "restarting",
        restarts: process.restarts,
        last_exit: { code: process.code, signal: process.signal, at: new Date(process.at).toISOString() }
      }
  }
}

export const ping = Effect.gen(function*() {
  const health = yield* OllamaHealth
  const preloader = yield* Preloader
  const ollamaProcess = yield* OllamaProcess
  const { since, state, version } = health.snapshot()
  const preload = preloader.snapshot()
  if (state === "starting" || (state === "up" && preload.state !== "done")) {
    return HttpServerResponse.empty({ status: 204 })
  }
  const failures = preload.models.filter((m) => m.state === "failed")
  const body = {
    status: state === "up" ? "ready" : "unhealthy",
    ollama: {
      state,
      since: new Date(since).toISOString(),
      ...(version === undefined ? {} : { version }),
      ...processBody(ollamaProcess.current())
    },
    preload: {
      state: preload.state,
      ready: preload.models.filter((m) => m.state === "ready").length,
      total: preload.models.length,
      models: preload.models,
      failures: failures.map((m) => ({ model: m.model, error: m.error }))
    }
  }
  return HttpServerResponse.unsafeJson(body, { status: state === "up" ? 200 : 503 })
})
