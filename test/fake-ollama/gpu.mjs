// @ts-check
/**
 * The fake's GPU: one NVIDIA L4 (a 24 GB card RunPod offers, 22.5 GiB as CUDA reports it) by
 * default, any size or none at all by knob. What `ollama serve` logs of it at start follows
 * discover/types.go (LogDetails) and server/routes.go ("vram-based default context").
 */
import os from "node:os"

const GIB = 1024 ** 3
const MIB = 1024 ** 2

/** 22.5 GiB: what an L4 reports as its total memory. */
export const DEFAULT_VRAM = 22.5 * GIB

/** Memory the CUDA driver keeps for itself, so "available" is less than "total" on an idle card. */
const DRIVER_RESERVED = 420 * MIB

/** Go's format.HumanBytes2: powers of 1024, one decimal. */
export function humanBytes2(/** @type {number} */ b) {
  if (b >= GIB) return `${(b / GIB).toFixed(1)} GiB`
  if (b >= MIB) return `${(b / MIB).toFixed(1)} MiB`
  if (b >= 1024) return `${(b / 1024).toFixed(1)} KiB`
  return `${Math.floor(b)} B`
}

const UNITS = /** @type {Record<string, number>} */ ({ "": 1, b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kib: 1024, mib: MIB, gib: GIB })

/**
 * `24159191040`, `22.5GiB`, `1 GB`, `0`: bytes, or undefined when the text is none of these.
 * @param {string | undefined} text
 */
export function parseBytes(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*$/i.exec(text ?? "")
  return m ? Math.round(Number(m[1]) * (UNITS[(m[2] ?? "").toLowerCase()] ?? 1)) : undefined
}

/** The context Ollama loads models with when a request names none: by total VRAM (routes.go). */
export function defaultNumCtx(/** @type {number} */ vram) {
  return vram >= 47 * GIB ? 262144 : vram >= 23 * GIB ? 32768 : 4096
}

/**
 * The start-up lines about compute devices, as [msg, attrs, source]: one "inference compute" per
 * GPU, or the CPU's when there is none, then the default context.
 * @param {number} vram
 * @returns {Array<[string, Record<string, unknown>, string]>}
 */
export function discoveryLines(vram) {
  /** @type {Array<[string, Record<string, unknown>, string]>} */
  const lines = []
  if (vram > 0) {
    lines.push(["inference compute", {
      id: "GPU-5b2e0a4c-93f1-7d28-64b0-c1e9a7f3d5b8",
      filter_id: "",
      library: "CUDA",
      compute: "8.9",
      name: "CUDA0",
      description: "NVIDIA L4",
      libdirs: "ollama,cuda_v12",
      driver: "12.8",
      pci_id: "0000:82:00.0",
      type: "discrete",
      total: humanBytes2(vram),
      available: humanBytes2(Math.max(0, vram - DRIVER_RESERVED))
    }, "types.go:32"])
  } else {
    lines.push(["inference compute", {
      id: "cpu",
      library: "cpu",
      compute: "",
      name: "cpu",
      description: "cpu",
      libdirs: "ollama",
      driver: "",
      pci_id: "",
      type: "",
      total: humanBytes2(os.totalmem()),
      available: humanBytes2(os.freemem())
    }, "types.go:50"])
  }
  lines.push(["vram-based default context", { total_vram: humanBytes2(vram), default_num_ctx: defaultNumCtx(vram) }, "routes.go:2058"])
  return lines
}
