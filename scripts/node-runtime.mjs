// The Node the image runs (the Dockerfile's NODE_VERSION), on this machine: its binary from the npm
// registry (package node-<platform>-<arch>, the official build), kept in a cache so that it is
// fetched once per machine. The tests run the bundle with it, and the benchmarks can.
//
//   node scripts/node-runtime.mjs      prints the path of that node binary (fetching it if need be)
//
// Cache: $NODE_RUNTIME_CACHE, else $XDG_CACHE_HOME/ollama-authentication-proxy/node, else
// ~/.cache/ollama-authentication-proxy/node.
import { execFileSync } from "node:child_process"
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs"
import os from "node:os"
import path from "node:path"
import { fileURLToPath } from "node:url"

const ROOT = fileURLToPath(new URL("..", import.meta.url))

/** NODE_VERSION in the Dockerfile: the one place the image's Node is pinned. */
export const imageNodeVersion = () => {
  const match = /^ARG NODE_VERSION=(\d+\.\d+\.\d+)\s*$/m.exec(readFileSync(path.join(ROOT, "Dockerfile"), "utf8"))
  if (!match) throw new Error("Dockerfile: no `ARG NODE_VERSION=<x.y.z>` line")
  return match[1]
}

const cacheDir = () =>
  process.env.NODE_RUNTIME_CACHE ??
    path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), ".cache"), "ollama-authentication-proxy", "node")

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * The path of a node binary of `version`, fetched with `npm pack` into the cache when missing.
 * Safe to call from parallel processes: each unpacks into its own directory and renames it into
 * place; the first rename wins.
 */
export const ensureNode = async (version = imageNodeVersion()) => {
  const pkg = `node-${process.platform}-${process.arch}`
  const dir = path.join(cacheDir(), `${pkg}-${version}`)
  const bin = path.join(dir, "bin", "node")
  if (existsSync(bin)) return bin
  mkdirSync(cacheDir(), { recursive: true })
  let lastError
  for (let attempt = 1; attempt <= 3; attempt++) {
    const work = mkdtempSync(path.join(cacheDir(), ".fetch-"))
    try {
      execFileSync("npm", ["pack", `${pkg}@${version}`, "--pack-destination", work, "--silent"], {
        cwd: work,
        stdio: ["ignore", "ignore", "pipe"],
        timeout: 300_000
      })
      const tarball = readdirSync(work).find((f) => f.endsWith(".tgz"))
      if (tarball === undefined) throw new Error(`npm pack ${pkg}@${version} left no tarball`)
      // Only the binary: the package also carries headers and docs.
      execFileSync("tar", ["-xzf", path.join(work, tarball), "-C", work, "package/bin/node"], { stdio: ["ignore", "ignore", "pipe"] })
      chmodSync(path.join(work, "package", "bin", "node"), 0o755)
      const reported = execFileSync(path.join(work, "package", "bin", "node"), ["--version"], { encoding: "utf8" }).trim()
      if (reported !== `v${version}`) throw new Error(`${pkg}@${version} reports ${reported}`)
      try {
        renameSync(path.join(work, "package"), dir)
      } catch (error) {
        if (!existsSync(bin)) throw error // else another process put it there first
      }
      return bin
    } catch (error) {
      lastError = error
      if (attempt < 3) await sleep(2000 * attempt)
    } finally {
      rmSync(work, { recursive: true, force: true })
    }
  }
  const detail = lastError?.stderr?.toString().trim() || lastError?.message
  throw new Error(`could not fetch Node ${version} (${pkg} from the npm registry): ${detail}`)
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  console.log(await ensureNode())
}
