/** Types of server.mjs: a fake `ollama serve` for tests. See README.md. */

export type Capability = "completion" | "embedding" | "tools" | "thinking" | "insert" | "vision"

/** A model on disk or pullable; a bare name takes its figures from the built-in catalog. */
export interface ModelSpec {
  /** `llama3.2` means `llama3.2:latest`, as in Ollama. */
  name: string
  /** Bytes on disk. */
  size?: number | undefined
  family?: string | undefined
  /** e.g. `3.2B` */
  parameterSize?: string | undefined
  /** e.g. `Q4_K_M` */
  quantization?: string | undefined
  /** `["completion"]` (default) or `["embedding"]`; `tools`, `thinking` allow those requests. */
  capabilities?: Array<Capability> | undefined
  contextLength?: number | undefined
  /** Length of the vectors /api/embed answers with (768 for nomic-embed-text). */
  embeddingLength?: number | undefined
  /** The Modelfile's SYSTEM prompt: in /api/show and in what `_debug_render_only` renders. */
  system?: string | undefined
  /** A model created from a cloud model: /api/tags lists it with `remote_host`, its requests go there (`cloudRequests`). */
  remoteHost?: string | undefined
  /** Its name at `remoteHost` (`remote_model`). */
  remoteModel?: string | undefined
}

export type LogLevel = "DEBUG" | "INFO" | "WARN" | "ERROR"

/** Knobs; all can be changed at runtime with `set`, except `host` and `port`. */
export interface FakeOllamaOptions {
  /** Bind address. Default `127.0.0.1`; `""`, `0.0.0.0` or `::` = all interfaces. */
  host?: string | undefined
  /** Default 0: a random free port. */
  port?: number | undefined
  /** Models on disk. Default `llama3.2:latest` (chat) and `nomic-embed-text:latest` (embedding). */
  models?: Array<ModelSpec | string> | undefined
  /** What /api/pull can fetch. Default `llama3.2`, `qwen3:0.6b`, `nomic-embed-text`, `all-minilm`. */
  pullable?: Array<ModelSpec | string> | undefined
  /** Content tokens per generation (eval_count). Default 5. */
  tokens?: number | undefined
  /** Delay between streamed chunks. Default 0. */
  tokenDelayMs?: number | undefined
  /** Cut every body into pieces at odd byte offsets and merge some lines, a tick between pieces. */
  splitWrites?: boolean | undefined
  /** After N content chunks: an `{"error":...}` line ends the stream (status stays 200). 0 = a 500 before any byte. */
  errorAfterChunks?: number | undefined
  /** After N content chunks: the socket is destroyed (the CLI exits 1 instead). */
  crashAfterChunks?: number | undefined
  /** Inference endpoints answer 503 `server busy, please try again.  maximum pending requests exceeded`. */
  busy?: boolean | undefined
  /** The next N pulls of a known model lose their connection after the first layer line. */
  pullFailTimes?: number | undefined
  /** Delay before each pull progress line. Default 0. */
  pullDelayMs?: number | undefined
  /** Delay before an inference request is answered, as a model load (every time). Default 0. */
  loadDelayMs?: number | undefined
  /** Refuse non-local Host headers with 403. Default: when bound to a loopback address. */
  checkHost?: boolean | undefined
  /** Default keep-alive of loaded models (OLLAMA_KEEP_ALIVE). Default `5m`. */
  keepAlive?: string | number | undefined
  /**
   * GPU memory in bytes (default an L4's 22.5 GiB). A model being loaded gets what the models
   * already loaded left free; /api/ps shows the part in GPU memory as `size_vram`, so a model that
   * does not fit, or any model with 0 (no GPU), is reported as (partly) on the CPU.
   */
  vram?: number | undefined
  /** The context a model is loaded with when the request sets no `num_ctx`, at most its own. Default 4096. */
  defaultNumCtx?: number | undefined
  /** Extra allowed CORS origins (OLLAMA_ORIGINS), `*` wildcards. */
  origins?: Array<string> | undefined
  /**
   * How many times in a row the fake's model calls the web_search tool of a /v1/messages or
   * /v1/responses request that declares it. Ollama runs at most 3 searches per request. Default 1.
   */
  webSearchCalls?: number | undefined
  /** Hosts a model's remote_host may name (OLLAMA_REMOTES). Default `["ollama.com"]`. */
  remotes?: Array<string> | undefined
  /**
   * Requests generating at once, as OLLAMA_NUM_PARALLEL (the executable reads that variable). The
   * others wait in one FIFO line, as in Ollama, and leave it when their client goes. Default: no limit.
   */
  numParallel?: number | undefined
  /** Requests waiting for a slot at most, as OLLAMA_MAX_QUEUE; past it 503 `server busy...`. Default 512. */
  maxQueue?: number | undefined
  /** Keep requests in `requests`. Default true. */
  recordRequests?: boolean | undefined
  /** Requests wait for this before being answered (the CLI's start-up delay). */
  ready?: Promise<unknown> | undefined
  /** Server log lines (model loads, injected failures), slog style. Default: none. */
  log?: ((level: LogLevel, msg: string, attrs?: Record<string, unknown>, source?: string) => void) | undefined
  /** Called once per request, when its body has arrived. */
  onRequest?: ((request: RecordedRequest) => void) | undefined
  /** Called once per request when its connection or response is done. */
  onResponse?: ((request: RecordedRequest, latencyNs: number) => void) | undefined
  /** Called after `crashAfterChunks` destroyed a socket. */
  onCrash?: (() => void) | undefined
}

export interface RecordedRequest {
  readonly id: number
  readonly method: string
  /** Path with query, as received. */
  readonly path: string
  /** Lower-case names, values as received; a repeated header is joined with ", ". */
  readonly headers: Readonly<Record<string, string>>
  /** name, value, name, value, ... as received. */
  readonly rawHeaders: ReadonlyArray<string>
  readonly body: Buffer
  /** The client went away before the response ended. */
  aborted: boolean
  /** The response was sent to its end. */
  completed: boolean
  status: number | undefined
  readonly remoteAddress: string
  /** The body after a `Content-Encoding: zstd` was undone (the /v1 routes of cloudPassthroughMiddleware). */
  decompressed: Buffer | undefined
  /**
   * The request as Ollama's Go structs read it (gojson.mjs: folded keys, the last one winning,
   * merges): the fields set, by their JSON names; for /v1/audio/transcriptions the form's
   * `model`, `response_format`, `language`, `prompt` as FormValue reads them, and `file`.
   */
  decoded: Record<string, unknown> | undefined
  /** Web searches Ollama ran on the operator's ollama.com account for this request (0 to 3). */
  webSearches: number
  /** The remote host that served it, when a cloud model did. */
  cloud: string | undefined
}

/** A loaded model's runner, as the scheduler keeps it. */
export interface RunnerState {
  /** As /api/ps names it. */
  name: string
  /** The keep-alive of the last request (api.Duration), in ns; math.MaxInt64 for ever. */
  keepAliveNs: bigint
  forever: boolean
  /** When it unloads (ns since the epoch): /api/ps `expires_at`. */
  expiresNs: bigint
  /** 0 when it runs on the CPU (`num_gpu: 0`, or no GPU memory). */
  sizeVram: number
  contextLength: number
  /** The api.Runner options it was loaded with (server/sched.go needsReload compares these). */
  options: {
    num_ctx: number
    num_batch: number
    /** -1: as many layers as fit. */
    num_gpu: number
    main_gpu: number | undefined
    use_mmap: boolean | undefined
    num_thread: number
    draft_num_predict: number
  }
}

export interface CloudRequest {
  /** The RecordedRequest's id. */
  id: number
  path: string
  /** The model as the request named it. */
  model: string
  /** The model asked of the remote host. */
  remoteModel: string
  remoteHost: string
}

export interface SlotStats {
  /** `numParallel`; undefined: no limit. */
  limit: number | undefined
  /** Requests generating now. */
  busy: number
  /** Requests waiting for a slot now. */
  waiting: number
  /** The most generating at once since the start (or `resetSlots`). */
  peak: number
  /** Running requests summed over time, in ms: busyMs / (limit * elapsed ms) is the slots' busy share. */
  busyMs: number
  /** Requests answered 503 because the line was full. */
  refused: number
}

export interface Figures {
  promptEvalCount: number
  evalCount: number
  doneReason: string
  /** The generated text. */
  content: string
  loadDuration: number
  promptEvalDuration: number
  evalDuration: number
  totalDuration: number
  /** OpenAI-style usage of the same figures (generations only). */
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number }
  /** /v1/messages only: the input_tokens of `message_start` (Ollama's len/4 estimate). */
  anthropicInputEstimate?: number
}

export interface FakeOllama {
  /** e.g. `http://127.0.0.1:40123` (127.0.0.1 when bound to all interfaces). */
  readonly url: string
  readonly port: number
  /** The bound address. */
  readonly host: string
  /** Every request received, in order. Clear with `requests.length = 0`. */
  readonly requests: Array<RecordedRequest>
  /** The knobs in force (defaults filled in). */
  readonly options: Readonly<FakeOllamaOptions>
  /** Changes knobs; `undefined` restores a default. `models` replaces the disk, `pullFailTimes` re-arms. */
  set(options: FakeOllamaOptions): void
  /** The first request matching, now or when it arrives. */
  waitFor(predicate?: (request: RecordedRequest) => boolean, timeoutMs?: number): Promise<RecordedRequest>
  /** The first request matching that the client abandoned before the response ended. */
  waitForAbort(predicate?: (request: RecordedRequest) => boolean, timeoutMs?: number): Promise<RecordedRequest>
  /** The slots now (`numParallel`): running, waiting, the most at once, busy time. */
  slots(): SlotStats
  /** Starts the slots' counts (busy time, peak, refusals) again from now. */
  resetSlots(): void
  /** Models on disk, as /api/tags names them. */
  models(): Array<string>
  /** Models loaded, as /api/ps names them. */
  loaded(): Array<string>
  /** Runner restarts per model (`llama3.2:latest`) because a request changed its runner options; cleared when `models` is set. */
  readonly reloads: Map<string, number>
  /** Requests a cloud model served (`:cloud` / `-cloud` names, models with a remote_host), in order; cleared when `models` is set. */
  readonly cloudRequests: Array<CloudRequest>
  /** Web searches Ollama ran on the operator's account, all requests together; reset when `models` is set. */
  readonly webSearches: number
  /** A loaded model's runner; undefined when it is not loaded. */
  runner(name: string): RunnerState | undefined
  /** The figures this server will report for a request, with its current knobs. */
  expected(path: string, body: unknown): Figures
  /** Stops listening and destroys every open connection. */
  close(): Promise<void>
}

export function startFakeOllama(options?: FakeOllamaOptions): Promise<FakeOllama>

/** The figures an endpoint reports for a request body (`tokens` default 5, `loadDelayMs` 0). */
export function expectedFigures(path: string, body: unknown, options?: { tokens?: number; loadDelayMs?: number }): Figures

export const VERSION: string
/** An L4's memory, 22.5 GiB: the fake's GPU unless told otherwise. */
export const DEFAULT_VRAM: number
export const BUSY_ERROR: string
export const MIDSTREAM_ERROR: string
export const PULL_MANIFEST_ERROR: string
/** Where `:cloud` models run: `https://ollama.com:443`. */
export const CLOUD_URL: string
/** The tokens generations cycle through. */
export const TOKEN_TEXTS: ReadonlyArray<string>
/** The i-th generated token (0-based). */
export function tokenText(i: number): string
/** The text of a generation of n tokens. */
export function generatedText(n: number): string
/** prompt_eval_count of a prompt text: ceil(UTF-8 bytes / 4), at least 1. */
export function promptTokens(text: string): number
/** The unit vector a text embeds to (before `dimensions`). */
export function embeddingFor(text: string, length: number, dimensions?: number): Float32Array
export function parseModelName(
  name: string
): { host: string; namespace: string; model: string; tag: string; key: string; display: string } | undefined

export interface OllamaHost {
  scheme: string
  /** "" for all interfaces. */
  host: string
  port: string
  /** What `ollama serve` passes to net.Listen: `127.0.0.1:11434`, `:1234`, `[::1]:11434`. */
  address: string
  url: string
  /** The port text refused in favour of the default. */
  invalidPort: string | undefined
}
/** Ollama's OLLAMA_HOST rules (envconfig.Host). */
export function parseOllamaHost(value: string | undefined): OllamaHost
/** What a loopback-bound Ollama does with a Host header: serve, answer an OPTIONS 204, or 403. */
export function checkHostHeader(hostHeader: string | undefined, method: string): "next" | "no-content" | "forbidden"
