// @ts-check
/**
 * The runner options of a request and when they force a reload, as server/sched.go
 * `needsReload` decides: it compares api.Runner (`num_ctx`, `num_batch`, `num_gpu`, `main_gpu`,
 * `use_mmap`, `num_thread`, `draft_num_predict`) of the loaded runner with the request's, except
 * that an automatic num_ctx / num_batch on both sides and a negative num_gpu on the request (let
 * Ollama decide) never count as a change.
 */

/**
 * @typedef {object} RunnerOptions
 * @property {number} num_ctx
 * @property {boolean} numCtxAuto the request set none
 * @property {number} num_batch
 * @property {boolean} numBatchAuto
 * @property {number} num_gpu -1: as many layers as fit
 * @property {number | undefined} main_gpu
 * @property {boolean | undefined} use_mmap undefined: automatic
 * @property {number} num_thread
 * @property {number} draft_num_predict
 */

/** api.Options.FromMap reads a JSON number into an int field by truncating it. */
const int = (/** @type {unknown} */ v) => (typeof v === "number" && Number.isFinite(v) ? Math.trunc(v) : undefined)

/**
 * The runner options a request asks for (api.DefaultOptions where it sets none).
 * @param {Record<string, unknown> | undefined} options
 * @param {number} autoNumCtx the context chosen when the request sets none
 * @returns {RunnerOptions}
 */
export function runnerOptions(options, autoNumCtx) {
  const o = options ?? {}
  const numCtx = int(o.num_ctx)
  const numBatch = int(o.num_batch)
  return {
    num_ctx: numCtx ?? autoNumCtx,
    numCtxAuto: numCtx === undefined,
    num_batch: numBatch ?? 512,
    numBatchAuto: numBatch === undefined,
    num_gpu: int(o.num_gpu) ?? -1,
    main_gpu: int(o.main_gpu),
    use_mmap: typeof o.use_mmap === "boolean" ? o.use_mmap : undefined,
    num_thread: int(o.num_thread) ?? 0,
    draft_num_predict: int(o.draft_num_predict) ?? 0
  }
}

/** server/sched.go `runnerRef.needsReload`, the options part of it. */
export function needsReload(/** @type {RunnerOptions} */ loaded, /** @type {RunnerOptions} */ request) {
  const a = { ...loaded }
  const b = { ...request }
  if (a.numCtxAuto && b.numCtxAuto) b.num_ctx = a.num_ctx
  if (a.numBatchAuto && b.numBatchAuto) b.num_batch = a.num_batch
  if (b.num_gpu < 0) {
    a.num_gpu = -1
    b.num_gpu = -1
  }
  return (/** @type {const} */ (["num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict"]))
    .some((k) => a[k] !== b[k])
}
