/**
 * One field of a `multipart/form-data` body (the `model` of a transcription request), read the way
 * Go's multipart reader reads it. Only what a key's model rule needs: the field's text, or "many"
 * when the form repeats it (Go would take the first, a check here must not have to choose).
 */

const BOUNDARY = /boundary=(?:"([^"]+)"|([^;\s]+))/i
const NAME = /(?:^|;)\s*name\s*=\s*(?:"([^"]*)"|([^;\s]+))/i

export const multipartField = (body: Buffer, contentType: string | undefined, field: string): string | "many" | undefined => {
  const match = contentType === undefined ? null : BOUNDARY.exec(contentType)
  if (match === null) return undefined
  const delimiter = Buffer.from(`--${match[1] ?? match[2]}`)
  let found: string | undefined
  let at = body.indexOf(delimiter)
  while (at >= 0) {
    const next = body.indexOf(delimiter, at + delimiter.length)
    if (next < 0) break
    const part = body.subarray(at + delimiter.length, next)
    const headersEnd = part.indexOf("\r\n\r\n")
    if (headersEnd >= 0) {
      const headers = part.subarray(0, headersEnd).toString("latin1")
      const disposition = headers.split("\r\n").find((line) => /^content-disposition:/i.test(line))
      const name = disposition === undefined ? null : NAME.exec(disposition.slice(disposition.indexOf(":") + 1))
      if (name !== null && (name[1] ?? name[2]) === field) {
        if (found !== undefined) return "many"
        // The part ends with the CRLF that comes before the next delimiter.
        found = part.subarray(headersEnd + 4, part.length - 2).toString("utf8")
      }
    }
    at = next
  }
  return found
}
