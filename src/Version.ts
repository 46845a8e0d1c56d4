/** The package version, set by the bundler (scripts/build.mjs); "dev" when run from source. */
declare const __APP_VERSION__: string | undefined

export const VERSION: string = typeof __APP_VERSION__ === "string" ? __APP_VERSION__ : "dev"
export const USER_AGENT = `ollama-authentication-proxy/${VERSION}`
