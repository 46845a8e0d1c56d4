/**
 * A real Redis for tests: Debian's `redis-server` on a free loopback port, without persistence,
 * stopped after. `kill()` SIGKILLs it (a crash) and `start()` brings it back on the same port.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { once } from "node:events"
import { freePort } from "./http.js"

export interface TestRedis {
  readonly port: number
  readonly url: string
  /** Starts the server again on the same port (after `kill`). */
  readonly start: () => Promise<void>
  /** SIGKILL: a Redis that dies without a word. */
  readonly kill: () => Promise<void>
  /** SIGSTOP / SIGCONT: a Redis that holds its connections open and answers nothing, then everything. */
  readonly pause: () => void
  readonly resume: () => void
  readonly close: () => Promise<void>
}

export const startRedis = async (): Promise<TestRedis> => {
  const port = await freePort()
  let child: ChildProcess | undefined
  const start = async () => {
    const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    child = proc
    let output = ""
    await new Promise<void>((resolve, reject) => {
      const onData = (chunk: Buffer) => {
        output += chunk.toString()
        if (output.includes("Ready to accept connections")) {
          proc.stdout!.off("data", onData)
          proc.stdout!.resume()
          resolve()
        }
      }
      proc.stdout!.on("data", onData)
      proc.once("error", reject)
      proc.once("exit", (code) => reject(new Error(`redis-server exited (${code}): ${output}`)))
    })
  }
  const kill = async () => {
    const proc = child
    child = undefined
    if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return
    const exited = once(proc, "exit")
    proc.kill("SIGKILL")
    await exited
  }
  await start()
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    start,
    kill,
    pause: () => child?.kill("SIGSTOP"),
    resume: () => child?.kill("SIGCONT"),
    close: async () => {
      child?.kill("SIGCONT")
      await kill()
    }
  }
}
