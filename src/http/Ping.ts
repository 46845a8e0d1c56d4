/**
 * /ping, RunPod's health check: 204 while initializing (Ollama has not answered yet, or the
 * preload runs, or with REQUIRE_GPU the GPU check after it), 200 when Ollama answers and the
 * preload is over, 503 when Ollama is down after having been up, or with REQUIRE_GPU when a
 * preloaded model is not entirely in GPU memory. Answered from state only; never waits on Ollama.
 *
 * With OLLAMA_MANAGED=false nothing of ours is starting Ollama: one that has not answered and
 * failed a probe is not initializing but absent (a wrong OLLAMA_HOST, a stopped server), so it is
 * a 503 saying so, not a 204 for ever. The relay still tries it (OllamaHealth stays "starting"):
 * it may come up any moment.
 *
 * The health checker sends no key, so the status code never depends on one. Without a valid key
 * the body says only whether the worker is ready and why not; the details (Ollama's version, its
 * pid, the model names) are for callers with a key.
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect } from "effect"
import type { IncomingHttpHeaders } from "node:http"
import { ApiKeys } from "../keys/ApiKeys.js"
import { GpuCheck, type GpuSnapshot } from "../ollama/Gpu.js"
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

const gpuReason = (gpu: GpuSnapshot) =>
  gpu.state === "unknown"
    ? "cannot tell whether the preloaded models are in GPU memory (REQUIRE_GPU=true)"
    : "a preloaded model is not entirely in GPU memory (REQUIRE_GPU=true)"

export const ping = Effect.gen(function*() {
  const health = yield* OllamaHealth
  const preloader = yield* Preloader
  const ollamaProcess = yield* OllamaProcess
  const gpuCheck = yield* GpuCheck
  const snapshot = health.snapshot()
  const { since, version } = snapshot
  const absent = snapshot.state === "starting" && snapshot.reason !== undefined && !ollamaProcess.managed
  const state = absent ? "down" : snapshot.state
  const preload = preloader.snapshot()
  if (state === "starting" || (state === "up" && (preload.state !== "done" || gpuCheck.pending()))) {
    return HttpServerResponse.empty({ status: 204 })
  }
  const gpu = gpuCheck.snapshot()
  const reason = state !== "up" ? "ollama is not answering" : gpuCheck.failing() ? gpuReason(gpu) : undefined
  const status = reason === undefined ? 200 : 503
  const summary = { status: reason === undefined ? "ready" : "unhealthy", state, ...(reason === undefined ? {} : { reason }) }

  const keys = yield* ApiKeys
  const request = yield* HttpServerRequest.HttpServerRequest
  if (!keys.open && !keys.authenticate(request.headers as IncomingHttpHeaders).ok) {
    return HttpServerResponse.unsafeJson(summary, { status })
  }
  const failures = preload.models.filter((m) => m.state === "failed")
  const compute = ollamaProcess.computeDevices()
  const body = {
    ...summary,
    ollama: {
      state,
      since: new Date(since).toISOString(),
      ...(version === undefined ? {} : { version }),
      // Where it was looked for and why it did not answer, as the log line says.
      ...(state === "up" ? {} : { url: health.origin, ...(snapshot.reason === undefined ? {} : { reason: snapshot.reason }) }),
      ...processBody(ollamaProcess.current())
    },
    preload: {
      state: preload.state,
      ready: preload.models.filter((m) => m.state === "ready").length,
      total: preload.models.length,
      models: preload.models,
      failures: failures.map((m) => ({ model: m.model, error: m.error }))
    },
    gpu: {
      required: gpuCheck.required,
      state: gpu.state,
      ...(gpu.checkedAt === undefined ? {} : { checked_at: new Date(gpu.checkedAt).toISOString() }),
      models: gpu.models,
      ...(gpu.error === undefined ? {} : { error: gpu.error }),
      ...(compute === undefined ? {} : { ollama_compute: compute })
    }
  }
  return HttpServerResponse.unsafeJson(body, { status })
})
