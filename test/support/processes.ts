/**
 * Whether a process is still there, for the "no orphan" checks. A killed child whose parent is
 * gone may linger as a zombie until init reaps it; a zombie counts as gone.
 */
import { readFileSync } from "node:fs"

export const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch {
    return false
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z"
  } catch {
    return false
  }
}

/** Resolves true once the process is gone, false if it is still there after the timeout. */
export const waitGone = async (pid: number, timeoutMs = 3000): Promise<boolean> => {
  const deadline = Date.now() + timeoutMs
  while (isAlive(pid)) {
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  return true
}
