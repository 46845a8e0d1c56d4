/**
 * Starting the real service for tests: in-process on a random port (startProxy), or as the
 * built bundle in its own process (spawnProxy), as a user or RunPod would run it.
 */
import { Layer, ManagedRuntime } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { once } from "node:events"
import { fileURLToPath } from "node:url"
import { NODE_FLAGS } from "../../scripts/node-flags.mjs"
import { AppLive, appWith } from "../../src/App.js"
import { Environment } from "../../src/Config.js"
import type { ExchangeAdmission, ExchangeConsumers } from "../../src/exchange/Exchange.js"
import { Server } from "../../src/http/Server.js"
import { freePort } from "./http.js"
import { makeSignal } from "./signal.js"

export const ROOT = fileURLToPath(new URL("../..", import.meta.url))
export const BUNDLE = fileURLToPath(new URL("../../dist/main.js", import.meta.url))
export const FAKE_OLLAMA_BIN = fileURLToPath(new URL("../fake-ollama/bin/ollama", import.meta.url))

export interface RunningProxy {
  readonly url: string
  readonly healthUrl: string
  readonly port: number
  readonly close: () => Promise<void>
}

/**
 * The whole app in this process, on a random loopback port, quiet unless told otherwise.
 * `services` supplies optional services the app reads if present (an in-memory span exporter);
 * `consumers` replaces the consumers of exchanges the app runs with, and the admission of keys
 * with limits (`noLimitsAdmission` from ./layer.ts, for keys without any).
 */
export const startProxy = async (
  env: Record<string, string>,
  services: Layer.Layer<any> = Layer.empty as Layer.Layer<any>,
  consumers?: Layer.Layer<ExchangeConsumers | ExchangeAdmission, never, any>
): Promise<RunningProxy> => {
  const app = consumers === undefined ? AppLive : appWith(consumers)
  const runtime = ManagedRuntime.make(
    app.pipe(
      Layer.provide(Environment.layer({ PORT: "0", HOST: "127.0.0.1", OLLAMA_MANAGED: "false", AUTHORIZATION_LOG_LEVEL: "error", ...env })),
      Layer.provide(services)
    )
  )
  const server = await runtime.runPromise(Server)
  return {
    url: `http://127.0.0.1:${server.port}`,
    healthUrl: `http://127.0.0.1:${server.healthPort}`,
    port: server.port,
    close: () => runtime.dispose()
  }
}

export interface SpawnedProxy {
  readonly child: ChildProcess
  readonly url: string
  readonly port: number
  /** Every stdout line so far, parsed as JSON where it is JSON. */
  readonly lines: Array<Record<string, unknown>>
  readonly stderr: () => string
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  /** Resolves with the first log line matching, waiting for it if need be. */
  readonly waitForLine: (predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number) => Promise<Record<string, unknown>>
  readonly kill: (signal?: NodeJS.Signals) => Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

/**
 * `node dist/main.js` with JSON logs on a random port; resolves once it logged `listening`.
 * Pass `waitForListening: false` for runs expected to fail at start; `node` runs another Node binary.
 */
export const spawnProxy = async (
  env: Record<string, string>,
  options: { waitForListening?: boolean; script?: string; cwd?: string; node?: string } = {}
): Promise<SpawnedProxy> => {
  const child = spawn(options.node ?? process.execPath, [...NODE_FLAGS, options.script ?? BUNDLE], {
    cwd: options.cwd ?? ROOT,
    env: { ...process.env, PORT: "0", HOST: "127.0.0.1", AUTHORIZATION_LOG_JSON: "true", ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  const lines: Array<Record<string, unknown>> = []
  const changed = makeSignal()
  let stderr = ""
  let buffered = ""
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    buffered += chunk
    let nl: number
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const text = buffered.slice(0, nl)
      buffered = buffered.slice(nl + 1)
      try {
        lines.push(JSON.parse(text))
      } catch {
        lines.push({ text })
      }
    }
    changed.notify()
  })
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
    stderr += chunk
  })
  let hasExited = false
  const exited = once(child, "exit").then(([code, signal]) => {
    hasExited = true
    changed.notify()
    return { code: code as number | null, signal: signal as NodeJS.Signals | null }
  })

  const waitForLine = (predicate: (line: Record<string, unknown>) => boolean, timeoutMs = 15_000) =>
    changed.until(
      () => {
        const found = lines.find(predicate)
        if (found === undefined && hasExited) throw new Error(`proxy exited before the expected log line; stderr: ${stderr}`)
        return found
      },
      timeoutMs,
      () => `timed out waiting for a log line; stderr: ${stderr}\nlines: ${JSON.stringify(lines)}`
    )

  let port = 0
  if (options.waitForListening !== false) {
    const listening = await waitForLine((l) => l.msg === "listening")
    port = Number(listening.port)
  }
  return {
    child,
    url: `http://127.0.0.1:${port}`,
    port,
    lines,
    stderr: () => stderr,
    exited,
    waitForLine,
    kill: (signal = "SIGTERM") => {
      if (!hasExited) child.kill(signal)
      return exited
    }
  }
}

/** The bundle managing the fake `ollama` executable (FAKE_OLLAMA_BIN) on a free port, as RunPod runs the image. */
export const spawnManaged = async (env: Record<string, string> = {}, options: Parameters<typeof spawnProxy>[1] = {}) =>
  spawnProxy({ OLLAMA_BIN: FAKE_OLLAMA_BIN, OLLAMA_HOST: `127.0.0.1:${await freePort()}`, ...env }, options)

/**
 * Resolves once /ping says 200: the proxy has seen Ollama answer (its health is a state a
 * background probe keeps) and the preload is over.
 */
export const untilReady = async (url: string, timeoutMs = 10_000) => {
  const deadline = Date.now() + timeoutMs
  while ((await fetch(`${url}/ping`)).status !== 200) {
    if (Date.now() > deadline) throw new Error(`the proxy at ${url} never said it was ready`)
    await new Promise((r) => setTimeout(r, 20))
  }
}
