/**
 * Limits on the request path: the admission of a request whose key has limits, before a byte
 * reaches Ollama, and the charge of its tokens once the exchange has ended (a consumer of
 * exchanges, like the usage records, which wait for it to carry the key's totals). Every keyed
 * inference is charged, limits or not: the key's tokens by model are what GET /v1/usage
 * (OwnUsage.ts) reports. The limits themselves are the entries of Table.ts.
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
import { RedisConfig } from "../config/Shared.js"
import type { Refusal } from "../exchange/Errors.js"
import { type Admit, type Exchange, type ExchangeConsumer, type ExchangeWatch, type PeriodTotals, writerOf } from "../exchange/Exchange.js"
import { ApiKeys } from "../keys/ApiKeys.js"
import { labelCache } from "../telemetry/Metrics.js"
import { left, limitHeaders, refusalMessage } from "./Headers.js"
import { LimitsConfig } from "./LimitsConfig.js"
import { makeOwnUsage } from "./OwnUsage.js"
import { redisStore } from "./RedisStore.js"
import { type Admission, type AnyLimitStore, embeddedStore, type HeldSlot, LEASE_MS, periodsAt, type Usage } from "./Store.js"
import { LIMITS, NO_LIMITS, type Plan, planner } from "./Table.js"

// The limits are the one writer of what they did with an exchange, and of their headers on its answer.
const writeLimits = writerOf("limits", "the limits")
const writeLimitHeaders = writerOf("limitHeaders", "the limits")

/** One gauge per limit, `ollama_proxy.key.remaining_<gauge>`; labels: api_key_name. Left out of public scrapes, like every per-key gauge. */
const remaining = LIMITS.map((def) => Metric.gauge(`ollama_proxy.key.remaining_${def.gauge}`, { description: def.gaugeDescription }))
const keyLabels = labelCache(["api_key_name"])

/**
 * Labels: operation = admit | charge | renew | release | read, decision = open | closed | retried |
 * lease (a slot not renewed or given back frees itself when its lease ends).
 */
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

/** The model the tokens were used with: the answer's, else the one the request named. */
const modelOf = (exchange: Exchange) => {
  const answer = exchange.reading.answer
  return answer?.usage.model ?? answer?.firstModel ?? exchange.reading.requestModel ?? ""
}

const setGauges = (name: string, plan: Plan, usage: Usage) => {
  const labels = keyLabels(name)
  for (const limit of plan.entries) remaining[limit.index]!.unsafeUpdate(left(limit.value, usage.used[limit.index]!), labels)
}

const totalsOf = (usage: Usage, now: number): PeriodTotals => {
  const periods = periodsAt(now)
  return { day: periods.day, tokens_day: usage.tokensDay, month: periods.month, tokens_month: usage.tokensMonth }
}

const describe = (error: unknown) => (error instanceof Error ? error.message : String(error))

export class Limits extends Effect.Service<Limits>()("app/Limits", {
  scoped: Effect.gen(function*() {
    const { onFailure, timeout } = yield* LimitsConfig
    const { redisUrl } = yield* RedisConfig
    const keys = yield* ApiKeys
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
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
    const failed = (operation: "admit" | "charge" | "read", decision: "open" | "closed" | "retried", error: unknown) => {
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
    if (Option.isSome(redisUrl)) storeFailures.unsafeUpdate(0, failureLabels("renew", "lease"))

    // A slot that cannot be renewed (or given back) frees itself when its lease runs out: each
    // failure is counted, and logged once when they start and once when renewals work again,
    // not at every renewal (every MAINTENANCE_EVERY while Redis is down).
    let slotsFailing = false
    const slotFailed = (operation: "renew" | "release", error: unknown) => {
      storeFailures.unsafeUpdate(1, failureLabels(operation, "lease"))
      if (slotsFailing) return
      slotsFailing = true
      runFork(
        Effect.logWarning("limits store (Redis): slots of requests in flight not renewed; they free themselves when their lease ends")
          .pipe(Effect.annotateLogs({ operation, lease_ms: LEASE_MS, error: describe(error) }))
      )
    }
    const slotsRenewed = () => {
      if (!slotsFailing) return
      slotsFailing = false
      runFork(Effect.logInfo("limits store (Redis): slots renewed again"))
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
      store = embeddedStore(LIMITS)
    }

    const planOf = planner(LIMITS)

    /** Slots this worker holds, renewed while their exchanges last. */
    const held = new Map<string, HeldSlot>()
    /** Tokens a failed charge could not count yet, by key name and model. */
    const owed = new Map<string, { name: string; plan: Plan; model: string; tokens: number }>()
    let slots = 0

    const payLater = (name: string, plan: Plan, model: string, tokens: number) => {
      if (tokens === 0) return
      const id = `${name}\n${model}`
      const debt = owed.get(id)
      owed.set(id, { name, plan, model, tokens: (debt?.tokens ?? 0) + tokens })
    }

    const refuse = (exchange: Exchange, plan: Plan, admission: Admission, now: number) => {
      const limit = admission.refused!
      const retryAfterMs = Math.max(1, admission.retryAfterMs)
      exchange.limits!.refused = limit.def.name
      exchange.refuse({
        status: 429,
        message: refusalMessage(limit, retryAfterMs),
        headers: {
          ...limitHeaders(exchange.caller.keyName!, plan, admission.usage, now, true),
          "retry-after": String(Math.ceil(retryAfterMs / 1000)),
          "retry-after-ms": String(retryAfterMs)
        },
        openAiType: limit.def.counts
      }, "rate_limited")
    }

    const admitted = (exchange: Exchange, plan: Plan, admission: Admission, now: number) => {
      const state = exchange.limits!
      state.admitted = true
      // A slot was named at the admission when the key has a limit of requests in flight; held ones are renewed.
      if (store.shared && state.slot !== "") held.set(state.slot, { name: exchange.caller.keyName!, slot: state.slot })
      // Given to the relay for the answer's head (res.setHeader would validate each, then make
      // writeHead merge every header of Ollama's answer the slow way: measured on the tags bench).
      writeLimitHeaders(exchange, limitHeaders(exchange.caller.keyName!, plan, admission.usage, now, exchange.route.inference))
    }

    const storeDown: Refusal = {
      status: 503,
      message: "the limits of this API key cannot be checked now (their store does not answer); retry shortly",
      headers: { "retry-after": "1" }
    }

    const admit: Admit = (exchange, limits, forward) => {
      const name = exchange.caller.keyName!
      const now = Date.now()
      const plan = planOf(limits)
      // Slots are named only where other workers see them (Redis); here any non-empty name holds one.
      const slot = !plan.entries.some((limit) => limit.def.window === "in_flight") ? "" : store.shared ? `${WORKER}:${++slots}` : HELD
      writeLimits(exchange, { admitted: false, slot, refused: undefined, totals: undefined, charged: undefined })
      const request = { name, plan, now, slot, tokens: exchange.route.inference }
      if (!store.shared) {
        const admission = store.admit(request)
        // The gauges are read again every MAINTENANCE_EVERY; on the request path only a refusal
        // sets them (measured: five gauge updates per request were ~0.3 us on the tags bench).
        if (admission.refused !== undefined) {
          setGauges(name, plan, admission.usage)
          return refuse(exchange, plan, admission, now)
        }
        admitted(exchange, plan, admission, now)
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
        setGauges(name, plan, admission.usage)
        if (admission.refused !== undefined) {
          if (gone) return exchange.finish("client_aborted")
          return refuse(exchange, plan, admission, now)
        }
        admitted(exchange, plan, admission, now)
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
            store.charge({ name, plan, now: Date.now(), tokens: 0, model: "", slot }).catch((error) => slotFailed("release", error))
          }
        },
        (error) => {
          if (late) return
          clearTimeout(timer)
          decided(undefined, error)
        }
      )
    }

    /** Counts the tokens of a keyed exchange without limits: only its tokens by model, for GET /v1/usage. */
    const chargeUnlimited = (exchange: Exchange) => {
      const tokens = tokensOf(exchange)
      if (tokens === 0) return
      const name = exchange.caller.keyName!
      const model = modelOf(exchange)
      const request = { name, plan: NO_LIMITS, now: Date.now(), slot: "", tokens, model }
      if (!store.shared) {
        store.charge(request)
        return
      }
      const charged = store.charge(request).then(answered, (error) => {
        failed("charge", "retried", error)
        payLater(name, NO_LIMITS, model, tokens)
      })
      pending.add(charged)
      void charged.then(() => pending.delete(charged))
    }

    const charge = (exchange: Exchange) => {
      const state = exchange.limits
      const limits = exchange.caller.key?.limits
      if (limits === undefined) return chargeUnlimited(exchange)
      if (state === undefined || !state.admitted) return
      const name = exchange.caller.keyName!
      const plan = planOf(limits)
      const tokens = tokensOf(exchange)
      const { slot } = state
      if (slot !== "" && store.shared) held.delete(slot)
      // Nothing to count and no slot to give back: only an inference's record wants the totals.
      if (tokens === 0 && slot === "" && !exchange.route.inference) return
      const now = Date.now()
      const model = modelOf(exchange)
      const request = { name, plan, now, slot, tokens, model }
      if (!store.shared) {
        const usage = store.charge(request)
        // Only an inference makes a record to carry the totals; the gauges are read again anyway.
        if (exchange.route.inference) {
          setGauges(name, plan, usage)
          state.totals = totalsOf(usage, now)
        }
        return
      }
      const charged = store.charge(request).then(
        (usage) => {
          answered()
          setGauges(name, plan, usage)
          state.totals = totalsOf(usage, now)
        },
        (error) => {
          failed("charge", "retried", error)
          payLater(name, plan, model, tokens)
        }
      )
      pending.add(charged)
      void charged.then(() => pending.delete(charged))
      // Only a key with limits has totals for its record to carry (key_period_totals): the record
      // of any other key is written at once, not a Redis round trip after its answer ended.
      if (exchange.caller.key?.limits !== undefined) state.charged = charged
    }
    const pending = new Set<Promise<void>>()

    const watch: ExchangeWatch = { end: charge }
    const consumer: ExchangeConsumer = {
      name: "limits",
      provides: ["charge"],
      // Keys with limits for every request; other keys for their inferences' tokens by model.
      open: (exchange) => {
        const key = exchange.caller.key
        return key === null || (key.limits === undefined && !exchange.route.inference) ? undefined : watch
      }
    }

    /** Renews this worker's slots, charges what is owed, and reads every limited key's counters for the gauges. */
    const maintain = Effect.promise(async () => {
      const now = Date.now()
      if (store.shared) {
        await store.renew([...held.values()], now).then(slotsRenewed, (error) => slotFailed("renew", error))
        for (const [id, debt] of [...owed]) {
          owed.delete(id)
          await store.charge({ name: debt.name, plan: debt.plan, tokens: debt.tokens, model: debt.model, slot: "", now }).then(
            answered,
            () => payLater(debt.name, debt.plan, debt.model, debt.tokens)
          )
        }
      }
      for (const [name, limits] of keys.limited()) {
        const plan = planOf(limits)
        try {
          setGauges(name, plan, await store.read(name, plan, now))
        } catch {
          // The gauges keep their last reading; the failure shows in the log and counter already.
        }
      }
      logFailures(false)
    })
    yield* maintain.pipe(Effect.repeat(Schedule.spaced(Duration.millis(MAINTENANCE_EVERY))), Effect.forkScoped)
    // Exchanges drained at shutdown still have their charges (and records) to finish.
    yield* Effect.addFinalizer(() => Effect.promise(() => Promise.all(pending)))

    const ownUsage = makeOwnUsage({ store, planOf, timeoutMs, failed: (error) => failed("read", "closed", error) })

    return { admit, consumer, ownUsage } as const
  }),
  dependencies: [ApiKeys.Default]
}) {}
