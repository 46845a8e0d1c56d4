/**
 * Where the schedule (src/schedule/) meets the exchange boundary: what the boundary calls instead
 * of the relay's `forward` for a request that has passed the key's checks and limits. Provided by
 * the Scheduler, as the limits provide their admission; none by default (tests without it).
 */
import { Context } from "effect"
import type { Exchange } from "../exchange/Exchange.js"

/** Sends the exchange on with `forward`, now or when a slot of Ollama's is free; or refuses it. */
export type Dispatch = (exchange: Exchange, forward: (exchange: Exchange) => void) => void

export class ExchangeDispatch extends Context.Reference<ExchangeDispatch>()("app/ExchangeDispatch", {
  defaultValue: (): Dispatch | undefined => undefined
}) {}
