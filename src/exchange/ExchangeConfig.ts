/**
 * The slices of the environment about the clients' side of an exchange: which peers' X-Forwarded-*
 * headers are believed (the relay, and the listeners' caps per client), and how long a body may
 * stop arriving (the relay). Here, below src/http/, since both sides import from this folder.
 */
import { Context, Duration, Either, Layer } from "effect"
import { isIP } from "node:net"
import { all, type Parse, parsePositiveDuration, quoted, readSlice, withDefault } from "../config/Read.js"

/** An address (prefix = its full length) or a CIDR block. */
export interface AddressBlock {
  readonly address: string
  readonly prefix: number
  readonly family: "ipv4" | "ipv6"
}

/** Addresses and CIDR blocks, IPv4 or IPv6, separated by commas or spaces. */
export const parseAddressBlocks: Parse<ReadonlyArray<AddressBlock>> = (raw) => {
  const blocks: Array<AddressBlock> = []
  for (const item of raw.split(/[\s,]+/)) {
    if (item === "") continue
    const slash = item.indexOf("/")
    const address = slash < 0 ? item : item.slice(0, slash)
    const version = isIP(address)
    const bits = version === 4 ? 32 : 128
    const prefixText = slash < 0 ? String(bits) : item.slice(slash + 1)
    const prefix = /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN
    if (version === 0 || address.includes("%") || !(prefix <= bits)) {
      return Either.left(`${quoted(item)} is not an IP address or CIDR block (like 10.0.0.0/8 or fd00::/8)`)
    }
    blocks.push({ address, prefix, family: version === 4 ? "ipv4" : "ipv6" })
  }
  return Either.right(blocks)
}

export interface TrustedProxiesConfigShape {
  /** Peers whose X-Forwarded-* headers are believed: addresses and CIDR blocks. */
  readonly trustedProxies: ReadonlyArray<AddressBlock>
}

const trustedProxies = all({ trustedProxies: withDefault("TRUSTED_PROXIES", parseAddressBlocks, []) })

export class TrustedProxiesConfig extends Context.Tag("app/TrustedProxiesConfig")<TrustedProxiesConfig, TrustedProxiesConfigShape>() {
  static readonly variables = trustedProxies.variables
  static readonly layer = Layer.effect(TrustedProxiesConfig, readSlice(trustedProxies))
}

export interface RelayConfigShape {
  /** How long a request body may stop arriving before the request is cut with 408. */
  readonly requestBodyTimeout: Duration.Duration
}

const relay = all({ requestBodyTimeout: withDefault("REQUEST_BODY_TIMEOUT", parsePositiveDuration, Duration.seconds(60)) })

export class RelayConfig extends Context.Tag("app/RelayConfig")<RelayConfig, RelayConfigShape>() {
  static readonly variables = relay.variables
  static readonly layer = Layer.effect(RelayConfig, readSlice(relay))
}
