/**
 * GpuCheck: whether the preloaded models sit entirely in GPU memory. On some GPU types Ollama
 * runs inference on the CPU although a GPU is attached (it did not take the GPU, or the model did
 * not fit): the worker still answers, ten times slower, while GPU time is billed. Ollama's
 * `/api/ps` shows it: `size_vram` below `size` means part of the model is on the CPU.
 *
 * After each round of warming (the preload, and the reload after every restart of Ollama) the
 * check reads `/api/ps` and sets `ollama.model.vram_ratio` per preloaded model. A model not
 * entirely in GPU memory is logged with what Ollama said of its compute devices at start, at
 * error level with REQUIRE_GPU=true (then /ping answers 503 and RunPod takes the worker out of
 * routing), else as a warning.
 */
import { Clock, Effect, Stream } from "effect"
import { setModelVramRatio } from "../telemetry/Metrics.js"
import { OllamaClient, type RunningModel } from "./Client.js"
import { OllamaHealth } from "./Health.js"
import { PreloadConfig } from "./OllamaConfig.js"
import { Preloader, retrySchedule } from "./Preloader.js"
import { type ComputeDevice, OllamaProcess } from "./Process.js"

export interface ModelPlacement {
  readonly model: string
  readonly size: number
  readonly size_vram: number
  readonly vram_ratio: number
}

export type GpuState =
  /** No preloaded model: nothing to check. */
  | "none"
  /** Waiting for a round of warming to end (at start, and after Ollama went down). */
  | "pending"
  /** Every preloaded model in memory is entirely in GPU memory. */
  | "ok"
  /** At least one is partly or wholly on the CPU. */
  | "insufficient"
  /** /api/ps could not be read. */
  | "unknown"

export interface GpuSnapshot {
  readonly state: GpuState
  readonly checkedAt?: number
  readonly models: ReadonlyArray<ModelPlacement>
  readonly error?: string
}

/** `llama3.2` as /api/ps names it: `llama3.2:latest`. Ollama's names are case-insensitive. */
export const psName = (model: string): string => {
  const name = model.toLowerCase()
  return name.slice(name.lastIndexOf("/") + 1).includes(":") ? name : `${name}:latest`
}

/** Where each model stands, in the order given; models not in memory are left out. */
export const placementsOf = (models: ReadonlyArray<string>, running: ReadonlyArray<RunningModel>): Array<ModelPlacement> =>
  models.flatMap((model) => {
    const found = running.find((r) => psName(r.name) === psName(model) || psName(r.model) === psName(model))
    if (found === undefined) return []
    const ratio = found.size > 0 ? Math.min(1, found.size_vram / found.size) : 1
    return [{ model, size: found.size, size_vram: found.size_vram, vram_ratio: Math.round(ratio * 1000) / 1000 }]
  })

/** With REQUIRE_GPU, whether this state keeps the worker out of routing. */
export const keepsOut = (required: boolean, gpu: GpuSnapshot) => required && (gpu.state === "insufficient" || gpu.state === "unknown")

/** With REQUIRE_GPU, whether /ping should still say "initializing" for the check. */
export const holdsBack = (required: boolean, gpu: GpuSnapshot) => required && gpu.state === "pending"

/** What the log line says of Ollama's devices: its own attributes, or why there are none. */
const devicesForLog = (devices: ReadonlyArray<ComputeDevice> | undefined): ReadonlyArray<ComputeDevice> | string =>
  devices === undefined
    ? "unknown: Ollama runs elsewhere (OLLAMA_MANAGED=false)"
    : devices.length === 0
    ? "none logged by ollama serve at start"
    : devices

export class GpuCheck extends Effect.Service<GpuCheck>()("app/GpuCheck", {
  scoped: Effect.gen(function*() {
    const config = yield* PreloadConfig
    const client = yield* OllamaClient
    const health = yield* OllamaHealth
    const preloader = yield* Preloader
    const ollamaProcess = yield* OllamaProcess
    const required = config.requireGpu
    const nothingToCheck = config.preloadModels.length === 0

    let snapshot: GpuSnapshot = { state: nothingToCheck ? "none" : "pending", models: [] }
    // A check that began before Ollama went down must not overwrite the pending state after it.
    let generation = 0

    if (required && nothingToCheck) {
      yield* Effect.logWarning("REQUIRE_GPU=true, but no PRELOAD_MODEL is set: there is no model to check")
    }

    const readPs = Effect.suspend(() => health.awaitUp.pipe(Effect.zipRight(client.ps))).pipe(
      Effect.retry({ schedule: retrySchedule })
    )

    const report = (placement: ModelPlacement) =>
      (required ? Effect.logError : Effect.logWarning)("model is not entirely in GPU memory").pipe(
        Effect.annotateLogs({
          model: placement.model,
          size: placement.size,
          size_vram: placement.size_vram,
          vram_ratio: placement.vram_ratio,
          require_gpu: required,
          ollama_compute: devicesForLog(ollamaProcess.computeDevices())
        })
      )

    const check = Effect.gen(function*() {
      const started = generation
      const ready = preloader.snapshot().models.filter((m) => m.state === "ready").map((m) => m.model)
      const running = yield* readPs.pipe(Effect.either)
      const checkedAt = yield* Clock.currentTimeMillis
      if (started !== generation) return
      if (running._tag === "Left") {
        snapshot = { state: "unknown", checkedAt, models: [], error: running.left.message }
        return yield* Effect.logError("cannot tell whether the models are in GPU memory").pipe(
          Effect.annotateLogs({ error: snapshot.error, require_gpu: required })
        )
      }
      const models = placementsOf(ready, running.right)
      yield* Effect.forEach(models, (m) => setModelVramRatio(m.model, m.vram_ratio), { discard: true })
      const onCpu = models.filter((m) => m.size_vram < m.size)
      snapshot = { state: onCpu.length === 0 ? "ok" : "insufficient", checkedAt, models }
      if (onCpu.length === 0 && models.length > 0) {
        yield* Effect.logInfo("preloaded models are in GPU memory").pipe(
          Effect.annotateLogs({ models: models.map((m) => m.model).join(",") })
        )
      }
      yield* Effect.forEach(onCpu, report, { discard: true })
    }).pipe(Effect.withSpan("GpuCheck.check"))

    if (!nothingToCheck) {
      yield* preloader.warmed.changes.pipe(
        Stream.filter((rounds) => rounds > 0),
        Stream.runForEach(() => check),
        Effect.annotateLogs({ service: "GpuCheck" }),
        Effect.forkScoped
      )
      // After Ollama went down, what was in memory is gone: wait for the reload and look again.
      yield* health.changes.changes.pipe(
        Stream.filter((s) => s.state === "down"),
        Stream.runForEach(() =>
          Effect.sync(() => {
            generation++
            snapshot = { ...snapshot, state: "pending" }
          })
        ),
        Effect.forkScoped
      )
    }

    return {
      required,
      /** The state now; a plain read for /ping. */
      snapshot: (): GpuSnapshot => snapshot,
      /** Whether this check keeps the worker out of routing now (REQUIRE_GPU and a failed check). */
      failing: (): boolean => keepsOut(required, snapshot),
      /** Whether /ping should still say "initializing" for this check. */
      pending: (): boolean => holdsBack(required, snapshot)
    } as const
  }),
  dependencies: [OllamaClient.Default, OllamaHealth.Default, Preloader.Default, OllamaProcess.Default]
}) {}
