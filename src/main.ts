import { NodeRuntime } from "@effect/platform-node"
import { Cause, Effect, Layer } from "effect"
import { AppLive } from "./App.js"
import { Environment } from "./Config.js"

/** A start-up failure is one line on stderr naming what is wrong, and exit code 1. */
const reportFailure = (cause: Cause.Cause<{ readonly message: string }>) =>
  Effect.sync(() => {
    const failure = Cause.failureOption(cause)
    const text = failure._tag === "Some" ? failure.value.message : Cause.pretty(cause)
    process.stderr.write(`ollama-authentication-proxy: ${text}\n`)
  })

Layer.launch(AppLive).pipe(
  Effect.provide(Environment.process),
  Effect.tapErrorCause((cause) => (Cause.isInterruptedOnly(cause) ? Effect.void : reportFailure(cause))),
  NodeRuntime.runMain({ disableErrorReporting: true, disablePrettyLogger: true })
)
