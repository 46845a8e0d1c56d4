// Cold start of the built bundle: from exec of `node dist/main.js` to its first /ping answer,
// and to its first 200 (Ollama answering), median of N runs (default 10).
//   node bench/coldstart.mjs [runs]
import { spawn } from "node:child_process"
import { existsSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { NODE_FLAGS } from "../scripts/node-flags.mjs"
import { startFakeOllama } from "../test/fake-ollama/server.mjs"
import { freePort, median } from "./lib.mjs"

const bundle = fileURLToPath(new URL("../dist/main.js", import.meta.url))
const fakeBin = fileURLToPath(new URL("../test/fake-ollama/bin/ollama", import.meta.url))
if (!existsSync(bundle)) {
  console.error("dist/main.js is missing: run `npm run build` first")
  process.exit(1)
}
const runs = Number(process.argv[2] ?? 10)

const pingStatus = (port) => fetch(`http://127.0.0.1:${port}/ping`).then((r) => r.status, () => 0)

/** One start: ms to the first answer of any kind, and to the first 200. */
const once = async (env) => {
  const port = await freePort()
  const started = performance.now()
  const child = spawn(process.execPath, [...NODE_FLAGS, bundle], {
    env: { ...process.env, PORT: String(port), HOST: "127.0.0.1", AUTHORIZATION_LOG_LEVEL: "error", ...env },
    stdio: "ignore"
  })
  let firstAnswer
  try {
    for (;;) {
      const status = await pingStatus(port)
      const elapsed = performance.now() - started
      if (status !== 0 && firstAnswer === undefined) firstAnswer = elapsed
      if (status === 200) return { firstAnswer, ready: elapsed }
      if (elapsed > 20_000) throw new Error(`no 200 from /ping after 20 s (last ${status})`)
      await new Promise((r) => setTimeout(r, 1))
    }
  } finally {
    child.kill("SIGTERM")
    await new Promise((r) => child.once("exit", r))
  }
}

const measure = async (label, env) => {
  const results = []
  for (let i = 0; i < runs; i++) results.push(await once(env))
  const first = median(results.map((r) => r.firstAnswer))
  const ready = median(results.map((r) => r.ready))
  console.log(`${label.padEnd(44)} first /ping answer ${first.toFixed(0).padStart(5)} ms   first 200 ${ready.toFixed(0).padStart(5)} ms`)
  return { label, firstAnswerMs: first, readyMs: ready }
}

const fake = await startFakeOllama()
console.log(`cold start, median of ${runs} runs`)
const figures = [
  await measure("Ollama running elsewhere (OLLAMA_MANAGED=false)", { OLLAMA_MANAGED: "false", OLLAMA_HOST: fake.url }),
  await measure("managed: starts the fake ollama executable", {
    OLLAMA_BIN: fakeBin,
    OLLAMA_HOST: `127.0.0.1:${await freePort()}`
  })
]
await fake.close()
const target = 300
const pass = figures.every((f) => f.firstAnswerMs <= target)
console.log(`target: first answer within ${target} ms: ${pass ? "PASS" : "FAIL"}`)
