// Cold start of the built bundle against a bare Node HTTP server started the same way, in the same
// run: from exec to the first /ping answer of any kind (and, for the bundle, to its first 200,
// Ollama answering). Median of N runs each (default 10), the starts interleaved.
//   node bench/coldstart.mjs [runs] [--node current|image|PATH]
// --node: the Node that runs both, default the image's (scripts/node-runtime.mjs).
import { spawn } from "node:child_process"
import { existsSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { NODE_FLAGS } from "../scripts/node-flags.mjs"
import { ensureNode } from "../scripts/node-runtime.mjs"
import { startFakeOllama } from "../test/fake-ollama/server.mjs"
import { freePort, median } from "./lib.mjs"

const bundle = fileURLToPath(new URL("../dist/main.js", import.meta.url))
const fakeBin = fileURLToPath(new URL("../test/fake-ollama/bin/ollama", import.meta.url))
if (!existsSync(bundle)) {
  console.error("dist/main.js is missing: run `npm run build` first")
  process.exit(1)
}
const args = process.argv.slice(2)
const nodeAt = args.indexOf("--node")
const nodeChoice = nodeAt >= 0 ? args.splice(nodeAt, 2)[1] : "image"
const runs = Number(args[0] ?? 10)
const node = nodeChoice === "current" ? process.execPath : nodeChoice === "image" ? await ensureNode() : nodeChoice
// The goal: the bundle's first answer within 2.5x of the bare server's.
const GOAL_RATIO = 2.5

// What any service would take to start: node, node:http, a listener answering /ping.
const BARE = "require('node:http').createServer((q,s)=>{s.statusCode=204;s.end()}).listen(+process.env.PORT,process.env.HOST)"

const pingStatus = (port) => fetch(`http://127.0.0.1:${port}/ping`).then((r) => r.status, () => 0)

/** One start: ms to the first answer of any kind, and (`untilReady`) to the first 200. */
const once = async (argv, env, untilReady) => {
  const port = await freePort()
  const started = performance.now()
  const child = spawn(node, argv, {
    env: { ...process.env, PORT: String(port), HOST: "127.0.0.1", AUTHORIZATION_LOG_LEVEL: "error", ...env },
    stdio: "ignore"
  })
  let firstAnswer
  try {
    for (;;) {
      const status = await pingStatus(port)
      const elapsed = performance.now() - started
      if (status !== 0 && firstAnswer === undefined) firstAnswer = elapsed
      if (status === 200 || (status !== 0 && !untilReady)) return { firstAnswer, ready: elapsed }
      if (elapsed > 20_000) throw new Error(`no 200 from /ping after 20 s (last ${status})`)
      await new Promise((r) => setTimeout(r, 1))
    }
  } finally {
    child.kill("SIGKILL")
    await new Promise((r) => child.once("exit", r))
  }
}

const fake = await startFakeOllama()
const setups = [
  { label: "bare node:http server (node -e)", argv: [...NODE_FLAGS, "-e", BARE], env: {}, untilReady: false },
  {
    label: "proxy, Ollama running elsewhere",
    argv: [...NODE_FLAGS, bundle],
    env: { OLLAMA_MANAGED: "false", OLLAMA_HOST: fake.url },
    untilReady: true
  },
  {
    label: "proxy, managed: starts the fake ollama",
    argv: [...NODE_FLAGS, bundle],
    env: { OLLAMA_BIN: fakeBin, OLLAMA_HOST: `127.0.0.1:${await freePort()}` },
    untilReady: true
  }
]
const results = setups.map(() => [])
// Interleaved, so that whatever else the machine does hits every set-up alike.
for (let i = 0; i < runs; i++) {
  for (const [n, setup] of setups.entries()) results[n].push(await once(setup.argv, setup.env, setup.untilReady))
}
await fake.close()

const version = await new Promise((resolve) => {
  const child = spawn(node, ["--version"], { stdio: ["ignore", "pipe", "ignore"] })
  let out = ""
  child.stdout.on("data", (d) => (out += d))
  child.on("exit", () => resolve(out.trim()))
})
console.log(`cold start on node ${version}, median of ${runs} runs`)
const figures = setups.map((setup, n) => {
  const first = median(results[n].map((r) => r.firstAnswer))
  const ready = median(results[n].map((r) => r.ready))
  console.log(
    `${setup.label.padEnd(42)} first /ping answer ${first.toFixed(0).padStart(5)} ms` +
      (setup.untilReady ? `   first 200 ${ready.toFixed(0).padStart(5)} ms` : "")
  )
  return { label: setup.label, firstAnswerMs: first, readyMs: ready }
})
const ratio = figures[1].firstAnswerMs / figures[0].firstAnswerMs
console.log(
  `ratio (Ollama elsewhere / bare): ${ratio.toFixed(2)}x: ${ratio <= GOAL_RATIO ? "PASS" : "FAIL"} (goal: within ${GOAL_RATIO}x)`
)
