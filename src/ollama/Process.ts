/**
 * OllamaProcess: `OLLAMA_BIN serve` as our child, kept running. Its stdout and stderr become our
 * log lines; an exit is logged and followed by a restart on a backoff schedule; on shutdown it is
 * stopped with SIGTERM, then SIGKILL after OLLAMA_STOP_TIMEOUT. With OLLAMA_MANAGED=false there is
 * no child and the state says so.
 */
import { Command, CommandExecutor } from "@effect/platform"
import { NodeCommandExecutor, NodeFileSystem } from "@effect/platform-node"
import { Clock, Data, Deferred, Duration, Effect, Fiber, Layer, LogLevel, Metric, Option, Schedule, Stream, SubscriptionRef } from "effect"
import { Environment } from "../config/Read.js"
import { QueueConfig } from "../schedule/QueueConfig.js"
import { ollamaRestarts } from "../telemetry/Metrics.js"
import { DEFAULT_LOAD_TIMEOUT, OllamaConfig } from "./OllamaConfig.js"

/** `OLLAMA_BIN serve` could not be started at all (missing, not executable). */
export class OllamaSpawnError extends Data.TaggedError("OllamaSpawnError")<{
  readonly bin: string
  readonly reason: string
}> {
  override get message() {
    return `OLLAMA_BIN: cannot start "${this.bin} serve": ${this.reason}`
  }
}

export type ProcessState = Data.TaggedEnum<{
  /** OLLAMA_MANAGED=false: Ollama runs elsewhere. */
  Unmanaged: {}
  Starting: { readonly restarts: number }
  Running: { readonly pid: number; readonly since: number; readonly restarts: number }
  /** Exited on its own; a restart is scheduled. */
  Exited: {
    readonly code: number | null
    readonly signal: string | null
    readonly at: number
    readonly restarts: number
  }
}>
export const ProcessState = Data.taggedEnum<ProcessState>()

// ---------------------------------------------------------------------------------------------
// Restart policy

const RESTART_BASE = Duration.millis(500)
const RESTART_CAP = Duration.seconds(30)
/** A child that stayed up this long was healthy: the next crash starts the backoff over. */
const RESET_AFTER_UP = Duration.minutes(1)

/**
 * Input: how long the child that just exited was up. Output: the delay before the next start.
 * `Schedule.resetAfter` would count time since the first crash, so a crash loop would reset every
 * minute; the reset must depend on the uptime of the run that ended.
 */
export const restartSchedule: Schedule.Schedule<Duration.Duration, Duration.Duration> = Schedule.exponential(
  RESTART_BASE
).pipe(
  Schedule.modifyDelay((_, delay) => Duration.min(delay, RESTART_CAP)),
  Schedule.intersect(Schedule.identity<Duration.Duration>()),
  Schedule.resetWhen(([, uptime]) => Duration.greaterThanOrEqualTo(uptime, RESET_AFTER_UP)),
  Schedule.map(([delay]) => Duration.min(delay, RESTART_CAP))
)

/**
 * Runs `runOnce` (one child's life, returning its uptime) again and again on restartSchedule.
 * Separate from the spawning so TestClock can check the timing.
 */
export const supervise = <E, R>(runOnce: Effect.Effect<Duration.Duration, E, R>) =>
  runOnce.pipe(
    Effect.repeat(
      restartSchedule.pipe(
        Schedule.tapOutput((delay) => Effect.logInfo("restarting ollama").pipe(Effect.annotateLogs({ delay_ms: Duration.toMillis(delay) })))
      )
    )
  )

// ---------------------------------------------------------------------------------------------
// Ollama's log lines

export interface OllamaLogLine {
  readonly level: LogLevel.LogLevel
  readonly message: string
  readonly attributes: Record<string, string>
}

const LOGFMT_PAIR = /([A-Za-z_][\w.-]*)=(?:"((?:[^"\\]|\\.)*)"|(\S*))/g

const levelOf = (name: string): LogLevel.LogLevel => {
  const upper = name.toUpperCase()
  if (upper.startsWith("ERROR")) return LogLevel.Error
  if (upper.startsWith("WARN")) return LogLevel.Warning
  if (upper.startsWith("DEBUG") || upper.startsWith("TRACE")) return LogLevel.Debug
  return LogLevel.Info
}

/**
 * One line of `ollama serve` output: slog text (`time=... level=INFO source=x.go:1 msg="..."`)
 * keeps its level and attributes; `[GIN]` access lines are debug, since the proxy logs requests
 * itself; a bare `Error: ...` (a fatal start-up failure) is an error; anything else is info.
 */
export const parseOllamaLine = (line: string): OllamaLogLine => {
  if (/^time=\S+ level=/.test(line)) {
    const attributes: Record<string, string> = {}
    let level: LogLevel.LogLevel = LogLevel.Info
    let message = ""
    for (const match of line.matchAll(LOGFMT_PAIR)) {
      const key = match[1]!
      const value = match[2] !== undefined ? match[2].replace(/\\(.)/g, "$1") : match[3] ?? ""
      if (key === "level") level = levelOf(value)
      else if (key === "msg") message = value
      // Our own `source` says where the line comes from; slog's names a Go file.
      else if (key === "source") attributes.ollama_source = value
      else if (key !== "time") attributes[key] = value
    }
    return { level, message, attributes }
  }
  if (line.startsWith("[GIN")) return { level: LogLevel.Debug, message: line, attributes: {} }
  if (/^(Error|panic|fatal)\b/i.test(line)) return { level: LogLevel.Error, message: line, attributes: {} }
  return { level: LogLevel.Info, message: line, attributes: {} }
}

/** Ollama's start-up line about each device it will compute on (discover/types.go), one per GPU or the CPU's. */
const INFERENCE_COMPUTE = "inference compute"

const logOllamaOutput = (
  stream: Stream.Stream<Uint8Array, unknown>,
  name: "stdout" | "stderr",
  onLine: (line: OllamaLogLine) => void
) =>
  stream.pipe(
    Stream.decodeText(),
    Stream.splitLines,
    Stream.runForEach((line) => {
      if (line.trim() === "") return Effect.void
      const parsed = parseOllamaLine(line)
      onLine(parsed)
      const { attributes, level, message } = parsed
      return Effect.logWithLevel(level, message).pipe(
        Effect.annotateLogs({ ...attributes, source: "ollama", stream: name })
      )
    }),
    // A read error only means the pipe is gone; the exit is what gets reported.
    Effect.ignore
  )

// ---------------------------------------------------------------------------------------------
// Signals

/** Signals the child's whole process group (Command spawns it detached, as a group leader). */
const signalGroup = (pid: number, signal: NodeJS.Signals): boolean => {
  try {
    process.kill(-pid, signal)
    return true
  } catch {
    return false
  }
}

interface ExitStatus {
  readonly code: number | null
  readonly signal: string | null
}

/** Command reports a death by signal only as an error message; this recovers the signal. */
const exitStatusOf = (proc: CommandExecutor.Process): Effect.Effect<ExitStatus> =>
  proc.exitCode.pipe(
    Effect.map((code): ExitStatus => ({ code: Number(code), signal: null })),
    Effect.catchAll((error) => Effect.succeed<ExitStatus>({ code: null, signal: /signal: (\w+)/.exec(error.message)?.[1] ?? "unknown" }))
  )

/**
 * SIGTERM, then SIGKILL after the timeout. Command's own scope release (@effect/platform 0.97)
 * sends SIGTERM and then waits for the exit without any limit, so a stuck Ollama would hold
 * shutdown for ever: this runs first. The waits are made interruptible, or the timeouts could not
 * cut them inside a finalizer.
 */
const stop = (proc: CommandExecutor.Process, timeout: Duration.Duration, lastLines: Effect.Effect<void>) =>
  Effect.gen(function*() {
    if (!(yield* proc.isRunning.pipe(Effect.orElseSucceed(() => false)))) return
    const startedAt = yield* Clock.currentTimeMillis
    yield* Effect.logInfo("stopping ollama").pipe(
      Effect.annotateLogs({ signal: "SIGTERM", timeout_ms: Duration.toMillis(timeout) })
    )
    signalGroup(proc.pid, "SIGTERM")
    const exited = yield* exitStatusOf(proc).pipe(
      Effect.interruptible,
      Effect.timeoutTo({ duration: timeout, onSuccess: (status) => status, onTimeout: () => undefined })
    )
    const status = exited ?? (yield* Effect.gen(function*() {
      yield* Effect.logWarning("ollama did not stop in time, killing it").pipe(
        Effect.annotateLogs({ signal: "SIGKILL", timeout_ms: Duration.toMillis(timeout) })
      )
      signalGroup(proc.pid, "SIGKILL")
      return yield* exitStatusOf(proc).pipe(
        Effect.interruptible,
        Effect.timeoutTo({ duration: Duration.seconds(5), onSuccess: (s) => s, onTimeout: () => undefined })
      )
    }))
    const elapsed = (yield* Clock.currentTimeMillis) - startedAt
    yield* lastLines
    yield* Effect.logInfo("ollama stopped").pipe(
      Effect.annotateLogs({ code: status?.code ?? null, signal: status?.signal ?? null, duration_ms: elapsed })
    )
  }).pipe(Effect.withSpan("OllamaProcess.stop"))

// ---------------------------------------------------------------------------------------------

/** One device Ollama said it computes on, in its own words (the attributes of its log line). */
export type ComputeDevice = Readonly<Record<string, string>>

export interface OllamaProcessShape {
  /** false with OLLAMA_MANAGED=false. */
  readonly managed: boolean
  /** The supervisor's view now; a plain read. */
  readonly current: () => ProcessState
  readonly changes: SubscriptionRef.SubscriptionRef<ProcessState>
  /**
   * What the running `ollama serve` logged at start about its compute devices ("inference
   * compute": a GPU each, or the CPU); undefined when Ollama is not ours to watch.
   */
  readonly computeDevices: () => ReadonlyArray<ComputeDevice> | undefined
}

export class OllamaProcess extends Effect.Service<OllamaProcess>()("app/OllamaProcess", {
  scoped: Effect.gen(function*() {
    const config = yield* OllamaConfig
    if (!config.ollamaManaged) {
      const unmanaged = ProcessState.Unmanaged()
      const shape: OllamaProcessShape = {
        managed: false,
        current: () => unmanaged,
        changes: yield* SubscriptionRef.make<ProcessState>(unmanaged),
        computeDevices: () => undefined
      }
      return shape
    }

    const environment = yield* Environment
    const executor = yield* CommandExecutor.CommandExecutor
    // The Environment overlays the process environment (they are the same object in production),
    // so OLLAMA_MODELS, OLLAMA_KEEP_ALIVE, OLLAMA_HOST... reach the child as the user set them.
    // Ollama's own load timeout (5 minutes without progress) is too short for a large model read
    // from a cold network volume; unset, it gets what RunPod's own Ollama worker uses. Ollama must
    // run as many requests at once as the proxy dispatches to it (src/schedule/): unset,
    // OLLAMA_NUM_PARALLEL is the proxy's number of slots (QUEUE_SLOTS).
    const { ollamaNumParallel, slots } = yield* QueueConfig
    const command = Command.make(config.ollamaBin, "serve").pipe(
      Command.env({
        ...environment,
        ...(config.ollamaLoadTimeout.fromUser ? {} : { OLLAMA_LOAD_TIMEOUT: DEFAULT_LOAD_TIMEOUT }),
        ...(Option.isNone(ollamaNumParallel) && slots > 0 ? { OLLAMA_NUM_PARALLEL: String(slots) } : {})
      })
    )

    let current: ProcessState = ProcessState.Starting({ restarts: 0 })
    let devices: Array<ComputeDevice> = []
    const noteLine = (line: OllamaLogLine) => {
      if (line.message !== INFERENCE_COMPUTE) return
      const { ollama_source: _, ...attributes } = line.attributes
      devices.push(attributes)
    }
    const changes = yield* SubscriptionRef.make<ProcessState>(current)
    const publish = (state: ProcessState) =>
      Effect.suspend(() => {
        current = state
        return SubscriptionRef.set(changes, state)
      })

    const spawn = Command.start(command).pipe(
      Effect.provideService(CommandExecutor.CommandExecutor, executor),
      Effect.mapError((error) =>
        new OllamaSpawnError({
          bin: config.ollamaBin,
          reason: error._tag === "SystemError" && error.reason === "NotFound"
            ? "no such executable (set OLLAMA_BIN to the ollama binary)"
            : error._tag === "SystemError" && error.reason === "PermissionDenied"
            ? "permission denied"
            : error.message
        })
      )
    )

    const firstSpawn = yield* Deferred.make<void, OllamaSpawnError>()

    /** One life of the child: start, relay its output, wait for the exit. Returns its uptime. */
    const runOnce = (restarts: number) =>
      Effect.gen(function*() {
        yield* publish(ProcessState.Starting({ restarts }))
        // Each start discovers its devices anew: a restart may find a GPU gone.
        devices = []
        let output: Fiber.RuntimeFiber<void> | undefined
        // Its last lines (a bind error, a panic, its goodbye) belong before our exit line; a model
        // runner that kept the pipes open must not hold us, hence the bound.
        const lastLines = Effect.suspend(() =>
          output === undefined
            ? Effect.void
            : Fiber.join(output).pipe(Effect.interruptible, Effect.timeout("1 second"), Effect.ignore)
        )
        // Uninterruptible from the spawn until our stop is registered: in between, a shutdown would
        // leave the child to Command's own release, which may wait for ever.
        const proc = yield* spawn.pipe(
          Effect.tap((proc) => {
            const pid = proc.pid
            // If this process dies without running finalizers (an uncaught exception), the child
            // in its own process group would live on: kill it from the synchronous exit hook.
            const onExit = () => void signalGroup(pid, "SIGKILL")
            process.on("exit", onExit)
            return Effect.addFinalizer(() =>
              stop(proc, config.ollamaStopTimeout, lastLines).pipe(
                Effect.ensuring(Effect.suspend(() => {
                  // Whatever serve left behind in its group (model runners) goes with it.
                  signalGroup(pid, "SIGKILL")
                  process.off("exit", onExit)
                  return output === undefined ? Effect.void : Fiber.interrupt(output)
                }))
              )
            )
          }),
          Effect.uninterruptible,
          Effect.tap((proc) => Effect.annotateCurrentSpan("pid", proc.pid)),
          Effect.withSpan(restarts === 0 ? "OllamaProcess.start" : "OllamaProcess.restart", { attributes: { restarts } })
        )
        if (restarts > 0) yield* Metric.increment(ollamaRestarts)
        const pid = proc.pid
        const since = yield* Clock.currentTimeMillis
        // Both pipes are read to the end, always: a full pipe would block the child.
        output = yield* Effect.all(
          [logOllamaOutput(proc.stdout, "stdout", noteLine), logOllamaOutput(proc.stderr, "stderr", noteLine)],
          { concurrency: 2, discard: true }
        ).pipe(Effect.forkDaemon)
        yield* Deferred.succeed(firstSpawn, undefined)
        yield* publish(ProcessState.Running({ pid, since, restarts }))
        yield* Effect.logInfo("ollama started").pipe(Effect.annotateLogs({ pid, bin: config.ollamaBin }))

        const status = yield* exitStatusOf(proc)
        const at = yield* Effect.gen(function*() {
          yield* lastLines
          const at = yield* Clock.currentTimeMillis
          yield* publish(ProcessState.Exited({ ...status, at, restarts }))
          yield* Effect.logError("ollama exited").pipe(
            Effect.annotateLogs({ pid, code: status.code, signal: status.signal, uptime_ms: at - since })
          )
          yield* Effect.annotateCurrentSpan({ code: status.code, signal: status.signal, uptime_ms: at - since })
          return at
        }).pipe(Effect.withSpan("OllamaProcess.exit", { attributes: { pid } }))
        return Duration.millis(at - since)
      }).pipe(
        Effect.scoped,
        Effect.catchTag("OllamaSpawnError", (error) =>
          Deferred.fail(firstSpawn, error).pipe(
            Effect.flatMap((isFirst) =>
              isFirst
                ? Effect.fail(error)
                : Effect.logError("cannot restart ollama").pipe(
                  Effect.annotateLogs({ error: error.message }),
                  Effect.as(Duration.zero)
                )
            )
          )),
        Effect.withSpan("OllamaProcess.run", { attributes: { restarts } })
      )

    // runMain turns the first SIGTERM or SIGINT into a graceful shutdown and then lets go of the
    // signal, so a second one would kill us on the spot and leave the child running. Make the
    // second one an immediate exit instead: the exit hook above still kills the child.
    let signals = 0
    const onSignal = (signal: NodeJS.Signals) => {
      if (++signals < 2) return
      process.stderr.write(`ollama-authentication-proxy: second ${signal}, exiting now\n`)
      process.exit(signal === "SIGINT" ? 130 : 143)
    }
    yield* Effect.acquireRelease(
      Effect.sync(() => {
        process.on("SIGTERM", onSignal)
        process.on("SIGINT", onSignal)
      }),
      () =>
        Effect.sync(() => {
          process.off("SIGTERM", onSignal)
          process.off("SIGINT", onSignal)
        })
    )

    let runs = 0
    yield* supervise(Effect.suspend(() => runOnce(runs++))).pipe(
      Effect.annotateLogs({ service: "OllamaProcess" }),
      Effect.ignore,
      Effect.forkScoped
    )
    // A missing binary fails start-up here; later failures are retried by the loop.
    yield* Deferred.await(firstSpawn)

    const shape: OllamaProcessShape = { managed: true, current: () => current, changes, computeDevices: () => devices }
    return shape
  }),
  dependencies: [NodeCommandExecutor.layer.pipe(Layer.provide(NodeFileSystem.layer))]
}) {}
