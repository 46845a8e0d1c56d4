/**
 * What a key may be allowed to do, one scope per request: generate or embed (`inference`), read
 * the server's state (`read`), change it (`manage`), scrape the proxy's own `metrics`, or search the
 * web on the operator's account (`web`). The
 * classification of a request (src/exchange/Classify.ts) gives its scope; a key (src/keys/) holds
 * a set of them. A leaf both import (the keys' slice of the environment too, for AUTHORIZATION_DEFAULT_SCOPES).
 */
export type Scope = "inference" | "read" | "manage" | "metrics" | "web"

/**
 * `web` is not a kind of request but a right inside one: an inference request that declares a web
 * search tool makes Ollama search on the operator's ollama.com account (src/policy/RequestPolicy.ts).
 */
export const SCOPES: ReadonlyArray<Scope> = ["inference", "read", "manage", "metrics", "web"]

/** A scope as a key names it: one of them, or `all` for every one. */
export type ScopeName = Scope | "all"

/** The scopes some names grant: `all` is every scope. */
export const scopesOf = (names: ReadonlyArray<ScopeName>): ReadonlySet<Scope> =>
  new Set(names.includes("all") ? SCOPES : names.filter((n): n is Scope => n !== "all"))
