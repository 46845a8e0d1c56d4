/**
 * Who is calling: the API key's name, and the person a front end says it calls for.
 */
import type { IncomingHttpHeaders } from "node:http"
import type { KeyPolicy } from "../keys/ApiKeys.js"

export interface Caller {
  /** The API key and what it may do; null on an open proxy and for refused requests. */
  readonly key: KeyPolicy | null
  /** The API key's name; null on an open proxy and for refused requests. */
  readonly keyName: string | null
  user_id: string | null
  user_name: string | null
  user_email: string | null
  user_role: string | null
  chat_id: string | null
}

const WHO_HEADERS: ReadonlyArray<readonly [suffix: string, field: Exclude<keyof Caller, "key" | "keyName">]> = [
  ["-user-id", "user_id"],
  ["-user-name", "user_name"],
  ["-user-email", "user_email"],
  ["-user-role", "user_role"],
  ["-chat-id", "chat_id"]
]

const percentDecoded = (value: string) => {
  try {
    return decodeURIComponent(value)
  } catch {
    return value
  }
}

/**
 * Who the request is for, as a front end forwards it: headers ending in -user-id, -user-name,
 * -user-email, -user-role and -chat-id, whatever their prefix (Open WebUI sends
 * X-OpenWebUI-User-*; Node gives header names in lower case). Open WebUI percent-encodes names.
 */
export const callerOf = (key: KeyPolicy | null, headers: IncomingHttpHeaders): Caller => {
  const who: Caller = { key, keyName: key?.name ?? null, user_id: null, user_name: null, user_email: null, user_role: null, chat_id: null }
  for (const name in headers) {
    for (const [suffix, field] of WHO_HEADERS) {
      if (who[field] !== null || !name.endsWith(suffix)) continue
      const value = headers[name]
      const first = Array.isArray(value) ? value[0] : value
      if (first !== undefined && first !== "") who[field] = first
    }
  }
  if (who.user_name !== null) who.user_name = percentDecoded(who.user_name)
  return who
}
