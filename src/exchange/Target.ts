/**
 * The request target: the path Ollama will route the request by. Read once per exchange; the
 * classification, the metering, the logs and the spans all see this one path.
 */

/** The path of a request URL, without its query. */
export const pathOf = (url: string | undefined) => {
  const u = url ?? "/"
  const q = u.indexOf("?")
  return q < 0 ? u : u.slice(0, q)
}
