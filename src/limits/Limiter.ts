/**
 * Limits on the request path: the admission of a request whose key has limits, before a byte
 * reaches Ollama, and the charge of its tokens once the exchange has ended (a consumer of
 * exchanges, like the usage records, which wait for it to carry the key's totals).
 *
 * The counters live in this process (one worker) or in Redis (REDIS_URL: every worker). The
 * embedded store decides synchronously, inside the listener's callback; Redis costs one round trip
 * before the request goes on (the request is held, unread, meanwhile) and one after it ended, off
 * the response's path. A Redis that fails, or does not answer an admission within
 * LIMITS_STORE_TIMEOUT, lets the request in or refuses it as LIMITS_ON_STORE_FAILURE says; every such decision is counted, and
 * logged at most once per LOG_EVERY with the count since the last line. Tokens whose charge failed
 * are kept and charged again until Redis takes them.
 *
 * Plain callbacks and promises here, no Effect per request: see src/exchange/Boundary.ts.
 */
import { Duration, Effect, Metric, Option, Redacted, Runtime, Schedule } from "effect"
import { randomBytes } from "node:crypto"
import { AppConfig } from "../Config.js"
import type { Refusal } from "../exchange/Errors.js"
import type { Admit, Exchange, ExchangeConsumer, ExchangeWatch, PeriodTotals } from "../exchange/Exchange.js"
import { ApiKeys } from "../keys/ApiKeys.js"
import type { KeyLimits } from "../Limits.js"
import { labelCache } from "../telemetry/Metrics.js"
import { left, limitHeaders, refusalMessage } from "./Headers.js"
import { redisStore } from "./RedisStore.js"
import { type Admission, type AnyLimitStore, embeddedStore, type HeldSlot, LEASE_MS, periodsAt, type Usage } from "./Store.js"

/** Labels: api_key_name. Left out of public scrapes, like every per-key gauge. */
const remainingRequests = Metric.gauge("ollama_proxy.key.remaining_requests", {
  description: "Requests the key may still make in the current minute (requests_per_minute)"
})
const remainingTokens = Metric.gauge("ollama_proxy.key.remaining_tokens", {
  description: "Tokens the key may still use in the current minute (tokens_per_minute)"
})
const remainingConcurrent = Metric.gauge("ollama_proxy.key.remaining_concurrent_requests", {
  description: "Requests the key may still start while its others are in flight (concurrent_requests)"
})
const remainingTokensDay = Metric.gauge("ollama_proxy.key.remaining_tokens_day", {
  description: "Tokens left in the key's budget for the current UTC day (tokens_per_day)"
})
const remainingTokensMonth = Metric.gauge("ollama_proxy.key.remaining_tokens_month", {
  description: "Tokens left in the key's budget for the current UTC month (tokens_per_month)"
})
const keyLabels = labelCache(["api_key_name"])

/** Labels: operation = admit | charge, decision = open | closed | retried. */
export const storeFailures = Metric.counter("ollama_proxy.limits.store.failures", {
  description: "Operations on the limits store (Redis) that failed or timed out, by what the proxy decided",
  incremental: true
})
const failureLabels = labelCache(["operation", "decision"])

/** How often the limits store's failures are logged at most; each line gives the count since the last. */
const LOG_EVERY = 10_000
/** Leases renewed, failed charges retried, gauges read again: this often. */
const MAINTENANCE_EVERY = Math.floor(LEASE_MS / 3)

const WORKER = randomBytes(6).toString("hex")
const HELD = "held"

/** The tokens of an exchange: input and output, Ollama's figures or the estimate of a cut stream. */
const tokensOf = (exchange: Exchange) => {
  const { reading } = exchange
  if (reading.answer === undefined || reading.upstreamAt === null || reading.loadOnly) return 0
  const u = reading.answer.usage
  return (u.promptEvalCount ?? 0) + (u.evalCount ?? 0)
}

const setGauges = (name: string, limits: KeyLimits, usage: Usage) => {
  const labels = keyLabels(name)
  if (limits.requests_per_minute !== undefined) remainingRequests.unsafeUpdate(left(limits.requests_per_minute, usage.requests), labels)
  if (limits.tokens_per_minute !== undefined) remainingTokens.unsafeUpdate(left(limits.tokens_per_minute, usage.tokens), labels)
  if (limits.concurrent_requests !== undefined) remainingConcurrent.unsafeUpdate(left(limits.concurrent_requests, usage.concurrent), labels)
  if (limits.tokens_per_day !== undefined) remainingTokensDay.unsafeUpdate(left(limits.tokens_per_day, usage.tokensDay), labels)
  if (limits.tokens_per_month !== undefined) remainingTokensMonth.unsafeUpdate(left(limits.tokens_per_month, usage.tokensMonth), labels)
}

const totalsOf = (usage: Usage, now: number): PeriodTotals => {
  const periods = periodsAt(now)
  return { day: periods.day, tokens_day: usage.tokensDay, month: periods.month, tokens_month: usage.tokensMonth }
}

const describe = (error: unknown) => (error instanceof Error ? error.message : String(error))

export class Limits extends Effect.Service<Limits>()("app/Limits", {
  scoped: Effect.gen(function*() {
    const config = yield* AppConfig
    const keys = yield* ApiKeys
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const { onFailure, redisUrl, timeout } = config.limitsStore
    const timeoutMs = Duration.toMillis(timeout)

    // Failures are counted at once and logged at most once per LOG_EVERY, with what was decided.
    let unlogged = 0
    let lastLogged = -Infinity
    let lastError = ""
    let failing = false
    const logFailures = (force: boolean) => {
      const now = performance.now()
      if (unlogged === 0 || (!force && now - lastLogged < LOG_EVERY)) return
      const count = unlogged
      unlogged = 0
      lastLogged = now
      runFork(
        Effect.logWarning("limits store (Redis) failed: requests decided without it").pipe(
          Effect.annotateLogs({ failures: count, on_store_failure: onFailure, error: lastError })
        )
      )
    }
    const failed = (operation: "admit" | "charge", decision: "open" | "closed" | "retried", error: unknown) => {
      storeFailures.unsafeUpdate(1, failureLabels(operation, decision))
      lastError = describe(error)
      failing = true
      unlogged++
      logFailures(false)
    }
    const answered = () => {
      if (!failing) return
      failing = false
      logFailures(true)
      runFork(Effect.logInfo("limits store (Redis) answers again"))
    }
    for (const decision of [onFailure, "retried"] as const) {
      storeFailures.unsafeUpdate(0, failureLabels(decision === "retried" ? "charge" : "admit", decision))
    }

    let store: AnyLimitStore
    if (Option.isSome(redisUrl)) {
      const redis = yield* Effect.acquireRelease(
        Effect.sync(() =>
          redisStore({
            url: Redacted.value(redisUrl.value),
            timeoutMs,
            onConnectionError: (error) => {
              lastError = describe(error)
              if (!failing) {
                runFork(Effect.logWarning("limits store (Redis): connection failed").pipe(Effect.annotateLogs({ error: lastError })))
              }
              failing = true
            }
          })
        ),
        (redis) => Effect.promise(redis.close)
      )
      const ready = yield* Effect.promise(() => redis.ready(Math.max(2000, timeoutMs)))
      yield* ready
        ? Effect.logInfo("limits: counters in Redis, shared by every worker")
        : Effect.logWarning("limits: Redis does not answer yet; until it does, LIMITS_ON_STORE_FAILURE decides").pipe(
          Effect.annotateLogs({ on_store_failure: onFailure })
        )
      store = redis
    } else {
      store = embeddedStore()
    }

    /** Slots this worker holds, renewed while their exchanges last. */
    const held = new Map<string, HeldSlot>()
    /** Tokens a failed charge could not count yet, by key name. */
    const owed = new Map<string, { limits: KeyLimits; tokens: number }>()
    let slots = 0

    const payLater = (name: string, limits: KeyLimits, tokens: number) => {
      if (tokens === 0) return
      const debt = owed.get(name)
      owed.set(name, { limits, tokens: (debt?.tokens ?? 0) + tokens })
    }

    const refuse = (exchange: Exchange, limits: KeyLimits, admission: Admission, now: number) => {
      const limit = admission.refused!
      const retryAfterMs = Math.max(1, admission.retryAfterMs)
      exchange.limits!.refused = limit
      exchange.refuse({
        status: 429,
        message: refusalMessage(limit, limits[limit]!, retryAfterMs),
        headers: {
          ...limitHeaders(exchange.caller.keyName!, limits, admission.usage, now, true),
          "retry-after": String(Math.ceil(retryAfterMs / 1000)),
          "retry-after-ms": String(retryAfterMs)
        },
        openAiType: limit === "requests_per_minute" || limit === "concurrent_requests" ? "requests" : "tokens"
      }, "rate_limited")
    }

    const admitted = (exchange: Exchange, limits: KeyLimits, admission: Admission, now: number) => {
      const state = exchange.limits!
      state.admitted = true
      // A slot was named at the admission when the key has concurrent_requests; held ones are renewed.
      if (store.shared && state.slot !== "") held.set(state.slot, { name: exchange.caller.keyName!, slot: state.slot })
      // Given to the relay for the answer's head (res.setHeader would validate each, then make
      // writeHead merge every header of Ollama's answer the slow way: measured on the tags bench).
      exchange.responseHeaders = limitHeaders(exchange.caller.keyName!, limits, admission.usage, now, exchange.route.inference)
    }

    const storeDown: Refusal = {
      status: 503,
      message: "the limits of this API key cannot be checked now (their store does not answer); retry shortly",
      headers: { "retry-after": "1" }
    }

    const admit: Admit = (exchange, limits, forward) => {
      const name = exchange.caller.keyName!
      const now = Date.now()
      // Slots are named only where other workers see them (Redis); here any non-empty name holds one.
      const slot = limits.concurrent_requests === undefined ? "" : store.shared ? `${WORKER}:${++slots}` : HELD
      exchange.limits = { admitted: false, slot, refused: undefined, totals: undefined, charged: undefined }
      const request = { name, limits, now, slot, tokens: exchange.route.inference }
      if (!store.shared) {
        const admission = store.admit(request)
        // The gauges are read again every MAINTENANCE_EVERY; on the request path only a refusal
        // sets them (measured: five gauge updates per request were ~0.3 us on the tags bench).
        if (admission.refused !== undefined) {
          setGauges(name, limits, admission.usage)
          return refuse(exchange, limits, admission, now)
        }
        admitted(exchange, limits, admission, now)
        return forward(exchange)
      }
      // The request waits, unread, for one round trip. A client that leaves meanwhile is seen
      // here, and its slot (if it got one) is given back by the charge at the exchange's end.
      let gone = false
      const onClose = () => {
        gone = true
      }
      exchange.res.once("close", onClose)
      const decided = (admission: Admission | undefined, error?: unknown) => {
        exchange.res.off("close", onClose)
        if (admission === undefined) {
          failed("admit", onFailure, error)
          if (gone) return exchange.finish("client_aborted")
          if (onFailure === "closed") return exchange.refuse(storeDown, "rate_limited")
          exchange.limits!.admitted = true
          exchange.limits!.slot = ""
          return forward(exchange)
        }
        answered()
        setGauges(name, limits, admission.usage)
        if (admission.refused !== undefined) {
          if (gone) return exchange.finish("client_aborted")
          return refuse(exchange, limits, admission, now)
        }
        admitted(exchange, limits, admission, now)
        if (gone) return exchange.finish("client_aborted")
        forward(exchange)
      }
      // The request waits LIMITS_STORE_TIMEOUT at most. An answer that comes later was still
      // counted in Redis: a slot it took is given back at once (its request went on unchecked, or
      // was refused), and the request it counted stays counted for its minute.
      let late = false
      const timer = setTimeout(() => {
        late = true
        decided(undefined, new Error(`no answer within ${timeoutMs} ms`))
      }, timeoutMs)
      store.admit(request).then(
        (admission) => {
          if (!late) {
            clearTimeout(timer)
            return decided(admission)
          }
          if (admission.refused === undefined && slot !== "") {
            store.charge({ name, limits, now: Date.now(), tokens: 0, slot }).catch(() => {})
          }
        },
        (error) => {
          if (late) return
          clearTimeout(timer)
          decided(undefined, error)
        }
      )
    }

    const charge = (exchange: Exchange) => {
      const state = exchange.limits
      const limits = exchange.caller.key?.limits
      if (state === undefined || !state.admitted || limits === undefined) return
      const name = exchange.caller.keyName!
      const tokens = tokensOf(exchange)
      const { slot } = state
      if (slot !== "" && store.shared) held.delete(slot)
      // Nothing to count and no slot to give back: only an inference's record wants the totals.
      if (tokens === 0 && slot === "" && !exchange.route.inference) return
      const now = Date.now()
      const request = { name, limits, now, slot, tokens }
      if (!store.shared) {
        const usage = store.charge(request)
        // Only an inference makes a record to carry the totals; the gauges are read again anyway.
        if (exchange.route.inference) {
          setGauges(name, limits, usage)
          state.totals = totalsOf(usage, now)
        }
        return
      }
      state.charged = store.charge(request).then(
        (usage) => {
          answered()
          setGauges(name, limits, usage)
          state.totals = totalsOf(usage, now)
        },
        (error) => {
          failed("charge", "retried", error)
          payLater(name, limits, tokens)
        }
      )
      pending.add(state.charged)
      void state.charged.then(() => pending.delete(state.charged!))
    }
    const pending = new Set<Promise<void>>()

    const watch: ExchangeWatch = { end: charge }
    const consumer: ExchangeConsumer = {
      name: "limits",
      provides: ["charge"],
      open: (exchange) => (exchange.caller.key?.limits === undefined ? undefined : watch)
    }

    /** Renews this worker's slots, charges what is owed, and reads every limited key's counters for the gauges. */
    const maintain = Effect.promise(async () => {
      const now = Date.now()
      if (store.shared) {
        await store.renew([...held.values()], now).catch(() => {})
        for (const [name, debt] of [...owed]) {
          owed.delete(name)
          await store.charge({ name, limits: debt.limits, tokens: debt.tokens, slot: "", now }).then(
            answered,
            () => payLater(name, debt.limits, debt.tokens)
          )
        }
      }
      for (const [name, limits] of keys.limited()) {
        try {
          setGauges(name, limits, await store.read(name, limits, now))
        } catch {
          // The gauges keep their last reading; the failure shows in the log and counter already.
        }
      }
      logFailures(false)
    })
    yield* maintain.pipe(Effect.repeat(Schedule.spaced(Duration.millis(MAINTENANCE_EVERY))), Effect.forkScoped)
    // Exchanges drained at shutdown still have their charges (and records) to finish.
    yield* Effect.addFinalizer(() => Effect.promise(() => Promise.all(pending)))

    return { admit, consumer } as const
  }),
  dependencies: [ApiKeys.Default]
}) {}
