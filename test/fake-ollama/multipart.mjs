// @ts-check
/**
 * /v1/audio/transcriptions reads its form as middleware/openai.go `TranscriptionMiddleware` does:
 * `c.Request.ParseMultipartForm(25 << 20)` then `FormValue("model")`, `FormFile("file")`,
 * `FormValue("response_format" | "language" | "prompt")`.
 *
 * Go's net/http (request.go): ParseMultipartForm first runs ParseForm, which for a multipart body
 * fills `Form` with the URL query only; the multipart values are appended after them. FormValue is
 * `Form[key][0]`: the query's value comes first. mime/multipart's `Reader.NextPart` (which ReadForm
 * uses) decodes a part sent with `Content-Transfer-Encoding: quoted-printable`. A part with a
 * `filename` is a file, any other a value.
 */

/**
 * @typedef {{ values: Map<string, string[]>, files: Map<string, Buffer[]> }} Form
 */

/** The parameters of a header value like `multipart/form-data; boundary=x`. */
function params(/** @type {string} */ value) {
  /** @type {Record<string, string>} */
  const out = {}
  const re = /;\s*([^=\s;]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))/g
  for (const m of value.matchAll(re)) out[(m[1] ?? "").toLowerCase()] = m[2] !== undefined ? m[2].replace(/\\(.)/g, "$1") : m[3] ?? ""
  return out
}

/** mime/quotedprintable's reader: `=XX` escapes (either case), soft line breaks, trailing blanks dropped. */
export function decodeQuotedPrintable(/** @type {Buffer} */ data) {
  const lines = data.toString("latin1").split(/(?<=\n)/)
  /** @type {number[]} */
  const out = []
  for (const full of lines) {
    const eol = /\r?\n$/.exec(full)?.[0] ?? ""
    let line = full.slice(0, full.length - eol.length).replace(/[ \t]+$/, "")
    let soft = false
    if (line.endsWith("=")) {
      soft = true
      line = line.slice(0, -1)
    }
    for (let i = 0; i < line.length; i++) {
      const hex = line.slice(i + 1, i + 3)
      if (line[i] === "=" && /^[0-9A-Fa-f]{2}$/.test(hex)) {
        out.push(parseInt(hex, 16))
        i += 2
      } else out.push(line.charCodeAt(i) & 0xff)
    }
    if (!soft && eol) out.push(...Buffer.from(eol, "latin1"))
  }
  return Buffer.from(out)
}

/**
 * Parses a multipart/form-data body; undefined with Go's error text when it is not one.
 * @param {string | undefined} contentType
 * @param {Buffer} body
 * @returns {{ form: Form } | { error: string }}
 */
export function parseMultipart(contentType, body) {
  const type = (contentType ?? "").split(";")[0]?.trim().toLowerCase()
  if (type !== "multipart/form-data" && type !== "multipart/mixed") return { error: "request Content-Type isn't multipart/form-data" }
  const boundary = params(contentType ?? "").boundary
  if (!boundary) return { error: "no multipart boundary param in Content-Type" }
  /** @type {Form} */
  const form = { values: new Map(), files: new Map() }
  const delimiter = Buffer.from(`--${boundary}`)
  let at = body.indexOf(delimiter)
  if (at < 0) return { error: "multipart: NextPart: EOF" }
  for (;;) {
    at += delimiter.length
    if (body.subarray(at, at + 2).toString() === "--") return { form }
    const headerEnd = body.indexOf("\r\n\r\n", at)
    if (headerEnd < 0) return { error: "multipart: NextPart: EOF" }
    const next = body.indexOf(Buffer.concat([Buffer.from("\r\n"), delimiter]), headerEnd + 4)
    if (next < 0) return { error: "multipart: NextPart: EOF" }
    /** @type {Record<string, string>} */
    const headers = {}
    for (const line of body.subarray(at, headerEnd).toString("utf8").split("\r\n")) {
      const colon = line.indexOf(":")
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim()
    }
    let data = body.subarray(headerEnd + 4, next)
    if ((headers["content-transfer-encoding"] ?? "").toLowerCase() === "quoted-printable") data = decodeQuotedPrintable(data)
    const disposition = headers["content-disposition"] ?? ""
    const p = params(disposition)
    const name = p.name
    if (name !== undefined && /^form-data/i.test(disposition)) {
      if (p.filename !== undefined && p.filename !== "") form.files.set(name, [...(form.files.get(name) ?? []), data])
      else form.values.set(name, [...(form.values.get(name) ?? []), data.toString("utf8")])
    }
    at = next + 2
  }
}

/** Go's Request.FormValue after ParseMultipartForm: the query's first value, else the form's. */
export function formValue(/** @type {URLSearchParams} */ query, /** @type {Form} */ form, /** @type {string} */ key) {
  return query.getAll(key)[0] ?? form.values.get(key)?.[0] ?? ""
}
