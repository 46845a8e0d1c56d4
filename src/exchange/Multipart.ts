/**
 * The `model` of a transcription request, read the way Ollama reads it: middleware/openai.go
 * `TranscriptionMiddleware` calls Go's `Request.FormValue("model")`, which takes the first value of
 * `r.Form`: the URL query's values come first (net/http `ParseForm`, `url.ParseQuery`), then the
 * multipart form's (`ParseMultipartForm` appends them). So `?model=` in the target decides over any
 * form field. Go's multipart reader decodes a part sent with `Content-Transfer-Encoding:
 * quoted-printable` (mime/multipart `NextPart`), and a part with a file name is a file, not a value
 * (`ReadForm`).
 */

const BOUNDARY = /boundary=(?:"([^"]+)"|([^;\s]+))/i
const PARAM = (name: string) => new RegExp(`(?:^|;)\\s*${name}\\s*=\\s*(?:"([^"]*)"|([^;\\s]+))`, "i")
const NAME = PARAM("name")
const FILENAME = PARAM("filename")

/** A form value the proxy cannot read as Go would (Go fails on it too, with a 400). */
export class FormError extends Error {}

/** `url.QueryUnescape`: `+` is a space, `%XX` a byte; a bad escape is an error. */
const queryUnescape = (s: string): string => {
  if (/%(?![0-9a-fA-F]{2})/.test(s)) throw new FormError("a bad escape in the query")
  return decodeURIComponent(s.replace(/\+/g, " "))
}

/** The values of a name in a query string, in order (`url.ParseQuery`: `;` is an error since Go 1.17). */
const queryValues = (query: string, field: string): Array<string> => {
  const values: Array<string> = []
  for (const pair of query.split("&")) {
    if (pair === "") continue
    if (pair.includes(";")) throw new FormError("a semicolon in the query")
    const eq = pair.indexOf("=")
    const key = queryUnescape(eq < 0 ? pair : pair.slice(0, eq))
    if (key === field) values.push(queryUnescape(eq < 0 ? "" : pair.slice(eq + 1)))
  }
  return values
}

/** mime/quotedprintable: `=XX` a byte, `=` at a line's end a soft break; anything else after `=` is an error. */
const quotedPrintable = (bytes: Buffer): Buffer => {
  const text = bytes.toString("latin1")
  const out: Array<number> = []
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!
    if (c !== "=") {
      out.push(c.charCodeAt(0))
      continue
    }
    const rest = text.slice(i + 1)
    const soft = /^[ \t]*(\r\n|\n|$)/.exec(rest)
    if (soft !== null) {
      i += soft[0].length
      continue
    }
    if (!/^[0-9A-Fa-f]{2}/.test(rest)) throw new FormError("a bad quoted-printable escape")
    out.push(parseInt(rest.slice(0, 2), 16))
    i += 2
  }
  return Buffer.from(out)
}

/** The values of a field in a multipart body, in order. */
const formValues = (body: Buffer, contentType: string | undefined, field: string): Array<string> => {
  const match = contentType === undefined ? null : BOUNDARY.exec(contentType)
  if (match === null) return []
  const delimiter = Buffer.from(`--${match[1] ?? match[2]}`)
  const values: Array<string> = []
  let at = body.indexOf(delimiter)
  while (at >= 0) {
    const next = body.indexOf(delimiter, at + delimiter.length)
    if (next < 0) break
    const part = body.subarray(at + delimiter.length, next)
    const headersEnd = part.indexOf("\r\n\r\n")
    if (headersEnd >= 0) {
      const lines = part.subarray(0, headersEnd).toString("latin1").split("\r\n")
      const header = (name: string) => {
        const line = lines.find((l) => l.toLowerCase().startsWith(`${name}:`))
        return line === undefined ? undefined : line.slice(line.indexOf(":") + 1).trim()
      }
      const disposition = header("content-disposition")
      const name = disposition === undefined ? null : NAME.exec(disposition)
      const filename = disposition === undefined ? null : FILENAME.exec(disposition)
      const isFile = filename !== null && (filename[1] ?? filename[2] ?? "").split(/[\\/]/).pop() !== ""
      if (name !== null && (name[1] ?? name[2]) === field && !isFile) {
        // The part ends with the CRLF that comes before the next delimiter.
        let value = part.subarray(headersEnd + 4, part.length - 2)
        if (header("content-transfer-encoding")?.toLowerCase() === "quoted-printable") value = quotedPrintable(value)
        values.push(value.toString("utf8"))
      }
    }
    at = next
  }
  return values
}

/**
 * The model Ollama will use for this form: the query's first `model`, else the form's. A form
 * that repeats the field is refused by the caller ("many"): Go would take the first, a check here
 * must not have to choose.
 */
export const formModel = (query: string, body: Buffer, contentType: string | undefined): string | "many" | undefined => {
  const fromQuery = queryValues(query, "model")
  if (fromQuery.length > 0) return fromQuery[0]
  const fromForm = formValues(body, contentType, "model")
  return fromForm.length > 1 ? "many" : fromForm[0]
}
