import { describe, expect, it } from "@effect/vitest"
import { Clock, Duration, Effect, Fiber, LogLevel, Schedule, TestClock } from "effect"
import { parseOllamaLine, restartSchedule, supervise } from "../src/ollama/Process.js"

describe("Ollama's log lines", () => {
  it("keep the slog level, message and attributes", () => {
    const line = parseOllamaLine(
      `time=2026-08-20T10:00:00.000Z level=WARN source=sched.go:123 msg="model \\"x\\" too large" model=x gpu=0`
    )
    expect(line.level).toBe(LogLevel.Warning)
    expect(line.message).toBe(`model "x" too large`)
    expect(line.attributes).toEqual({ ollama_source: "sched.go:123", model: "x", gpu: "0" })
  })

  it.each([
    ["time=t level=DEBUG msg=x", LogLevel.Debug],
    ["time=t level=TRACE msg=x", LogLevel.Debug],
    ["time=t level=INFO msg=x", LogLevel.Info],
    ["time=t level=ERROR msg=x", LogLevel.Error],
    ["Error: listen tcp 127.0.0.1:11434: bind: address already in use", LogLevel.Error],
    ["[GIN] 2026/08/20 - 10:00:00 | 200 | 1ms | 127.0.0.1 | POST \"/api/chat\"", LogLevel.Debug],
    ["llama_model_loader: loaded meta data", LogLevel.Info]
  ])("%s -> %s", (text, level) => {
    expect(parseOllamaLine(text).level).toBe(level)
  })
})

describe("restarts", () => {
  /** Start times (simulated ms) of a child that lives for the given uptimes in turn. */
  const startTimes = (uptimes: ReadonlyArray<number>) =>
    Effect.gen(function*() {
      const starts: Array<number> = []
      let run = 0
      const runOnce = Effect.gen(function*() {
        starts.push(yield* Clock.currentTimeMillis)
        const uptime = uptimes[run++]
        if (uptime === undefined) return yield* Effect.never
        yield* Effect.sleep(Duration.millis(uptime))
        return Duration.millis(uptime)
      })
      const fiber = yield* supervise(runOnce).pipe(Effect.fork)
      const total = uptimes.reduce((a, b) => a + b, 0) + 31_000 * uptimes.length
      yield* TestClock.adjust(Duration.millis(total))
      yield* Fiber.interrupt(fiber)
      return starts
    })

  it.effect("back off from 0.5 s, doubling, capped at 30 s", () =>
    Effect.gen(function*() {
      const starts = yield* startTimes([0, 0, 0, 0, 0, 0, 0, 0, 0])
      const delays = starts.slice(1).map((t, i) => t - starts[i]!)
      expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000])
    }))

  it.effect("start over after a child stayed up a minute", () =>
    Effect.gen(function*() {
      const starts = yield* startTimes([0, 0, 0, 60_000, 0, 0])
      const gaps = starts.slice(1).map((t, i) => t - starts[i]!)
      // run 4 lived 60 s: the delay after it is back to 0.5 s
      expect(gaps).toEqual([500, 1000, 2000, 60_000 + 500, 1000, 2000])
    }))

  it.effect("a crash loop does not reset on elapsed time alone", () =>
    Effect.gen(function*() {
      const uptimes = Array.from({ length: 12 }, () => 5_000)
      const starts = yield* startTimes(uptimes)
      const delays = starts.slice(1).map((t, i) => t - starts[i]! - 5_000)
      expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000, 30_000, 30_000])
    }))

  it.effect("the schedule alone: uptime in, delay out", () =>
    Effect.gen(function*() {
      const out = yield* Schedule.run(restartSchedule, 0, [Duration.zero, Duration.zero, Duration.minutes(2), Duration.zero])
      expect(Array.from(out).map(Duration.toMillis)).toEqual([500, 1000, 500, 1000])
    }))
})
