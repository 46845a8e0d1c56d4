import { NodeRuntime } from "@effect/platform-node"
import { Cause, Effect, Exit, Layer } from "effect"
import { AppLive } from "./App.js"
import { Environment } from "./Config.js"

/** A start-up failure is one line on stderr naming what is wrong, and exit code 1. */
const reportFailure = (cause: Cause.Cause<{ readonly message: string }>) =>
  Effect.sync(() => {
    const failure = Cause.failureOption(cause)
    const text = failure._tag === "Some" ? failure.value.message : Cause.pretty(cause)
    process.stderr.write(`ollama-authentication-proxy: ${text}\n`)
  })

/**
 * Exits once stdout and stderr have taken every line. Into a pipe (a container's log, a supervisor)
 * Node writes asynchronously, and process.exit (which runMain calls after a signal) drops what is
 * still queued: measured, 5000 lines written just before it came out as 341 to 565. The last lines
 * of a shutdown are the "usage record not delivered" lines an operator replays.
 */
const flushThenExit = (exit: Exit.Exit<unknown, unknown>, onExit: (code: number) => void) => {
  const code = Exit.isFailure(exit) && !Cause.isInterruptedOnly(exit.cause) ? 1 : 0
  let pending = 2
  // A reader that never drains the pipe must not keep the process for ever.
  const timer = setTimeout(() => onExit(code), 10_000)
  const flushed = () => {
    if (--pending > 0) return
    clearTimeout(timer)
    onExit(code)
  }
  process.stdout.write("", flushed)
  process.stderr.write("", flushed)
}

Layer.launch(AppLive).pipe(
  Effect.provide(Environment.process),
  Effect.tapErrorCause((cause) => (Cause.isInterruptedOnly(cause) ? Effect.void : reportFailure(cause))),
  NodeRuntime.runMain({ disableErrorReporting: true, disablePrettyLogger: true, teardown: flushThenExit })
)
