/**
 * Waiting for something a test server or child process will report, without sleeping: the
 * source calls notify() whenever its state changes; until() resolves once the probe finds a value.
 */
export interface Signal {
  readonly notify: () => void
  /** Resolves with the probe's first defined answer; rejects with `describe()` after the timeout. */
  readonly until: <A>(probe: () => A | undefined, timeoutMs: number, describe: () => string) => Promise<A>
}

export const makeSignal = (): Signal => {
  const waiters = new Set<() => void>()
  return {
    notify: () => waiters.forEach((w) => w()),
    until: (probe, timeoutMs, describe) =>
      new Promise((resolve, reject) => {
        const check = () => {
          let found
          try {
            found = probe()
          } catch (error) {
            cleanup()
            return reject(error)
          }
          if (found === undefined) return
          cleanup()
          resolve(found)
        }
        const timer = setTimeout(() => {
          cleanup()
          reject(new Error(describe()))
        }, timeoutMs)
        const cleanup = () => {
          clearTimeout(timer)
          waiters.delete(check)
        }
        waiters.add(check)
        check()
      })
  }
}
