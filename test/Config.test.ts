import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Either, Layer, Option, Redacted } from "effect"
import { type AppConfigError, CONFIG_SLICES, CONFIG_VARIABLES, configFromEnv, Environment } from "../src/Config.js"
import { parseDuration } from "../src/config/Read.js"
import { ShutdownConfig, WorkerConfig } from "../src/config/Shared.js"
import { RelayConfig, TrustedProxiesConfig } from "../src/exchange/ExchangeConfig.js"
import { ServerConfig } from "../src/http/ServerConfig.js"
import { KeysConfig } from "../src/keys/KeysConfig.js"
import { OllamaConfig, parseLoadTimeout, PreloadConfig } from "../src/ollama/OllamaConfig.js"
import { OllamaHostConfig, parseOllamaHost } from "../src/OllamaHost.js"
import { QueueConfig } from "../src/schedule/QueueConfig.js"
import { OtelConfig } from "../src/telemetry/OtelConfig.js"
import { LoggingConfig } from "../src/telemetry/TelemetryConfig.js"
import { WebhookConfig } from "../src/usage/WebhookConfig.js"
import { configFailure as failure, loadConfig as load, sliceOf } from "./support/config.js"

describe("the configuration", () => {
  it("has the documented defaults", () => {
    const server = sliceOf(ServerConfig)
    expect(server.port).toBe(80)
    expect(server.healthPort).toBe(80)
    expect(server.host).toBe("0.0.0.0")
    expect(sliceOf(OllamaHostConfig).origin).toBe("http://127.0.0.1:11434")
    expect(sliceOf(OllamaConfig).ollamaBin).toBe("ollama")
    expect(sliceOf(OllamaConfig).ollamaManaged).toBe(true)
    expect(sliceOf(KeysConfig).apiKeys).toEqual([])
    expect(sliceOf(LoggingConfig).logLevel).toBe("info")
    const webhook = sliceOf(WebhookConfig)
    expect(Option.isNone(webhook.webhookUrl)).toBe(true)
    expect(Duration.toMillis(sliceOf(ShutdownConfig).shutdownTimeout)).toBe(25_000)
    expect(Duration.toMillis(webhook.webhookTimeout)).toBe(10_000)
    expect(webhook.webhookConcurrency).toBe(4)
    expect(sliceOf(PreloadConfig).preloadKeepAlive).toBe(-1)
    expect(Duration.toMillis(server.requestHeadersTimeout)).toBe(10_000)
    expect(Duration.toMillis(sliceOf(RelayConfig).requestBodyTimeout)).toBe(60_000)
    expect([server.maxConnections, server.maxConnectionsPerAddress]).toEqual([4096, 512])
    expect(sliceOf(TrustedProxiesConfig).trustedProxies).toEqual([])
  })

  it("reads TRUSTED_PROXIES as addresses and CIDR blocks of both families", () => {
    const config = sliceOf(TrustedProxiesConfig, { TRUSTED_PROXIES: " 10.0.0.0/8, 192.168.1.7 ,fd00::/8\n::1" })
    expect(config.trustedProxies).toEqual([
      { address: "10.0.0.0", prefix: 8, family: "ipv4" },
      { address: "192.168.1.7", prefix: 32, family: "ipv4" },
      { address: "fd00::", prefix: 8, family: "ipv6" },
      { address: "::1", prefix: 128, family: "ipv6" }
    ])
  })

  it("reads the older variable names and PORT_HEALTH", () => {
    const config = sliceOf(ServerConfig, { AUTHORIZATION_PORT: "8080", AUTHORIZATION_HOST: "127.0.0.1", PORT_HEALTH: "8081" })
    expect([config.port, config.healthPort, config.host]).toEqual([8080, 8081, "127.0.0.1"])
    expect(sliceOf(ServerConfig, { PORT: "9000", AUTHORIZATION_PORT: "8080" }).port).toBe(9000)
  })

  it("takes every AUTHORIZATION_APIKEY* as a key, named by its suffix", () => {
    const hash = "a".repeat(64)
    const config = sliceOf(KeysConfig, {
      AUTHORIZATION_APIKEY: "k0",
      AUTHORIZATION_APIKEY_BOB: "k1",
      AUTHORIZATION_APIKEY_TEAM_A: "k2",
      AUTHORIZATION_APIKEY_1: `sha256:${hash.toUpperCase()}`
    })
    expect(config.apiKeys.map((k) => [k.name, k.hashed])).toEqual([
      ["default", false],
      ["1", true],
      ["bob", false],
      ["team_a", false]
    ])
    expect(Redacted.value(config.apiKeys[1]!.secret)).toBe(hash)
    expect(String(config.apiKeys[0]!.secret)).not.toContain("k0")
  })

  it("lists PRELOAD_MODEL* once each, in a stable order", () => {
    const config = sliceOf(PreloadConfig, {
      PRELOAD_MODEL_10: "c",
      PRELOAD_MODEL: "a",
      PRELOAD_MODEL_2: "b, a",
      PRELOAD_MODELS_DIR: "/x"
    })
    expect(config.preloadModels).toEqual(["a", "b", "c"])
  })

  it.each([
    [{ PORT: "abc" }, "PORT: \"abc\" is not a port number"],
    [{ PORT: "70000" }, "PORT:"],
    [{ PORT_HEALTH: "-1" }, "PORT_HEALTH:"],
    [{ AUTHORIZATION_APIKEY_BOB: "" }, "AUTHORIZATION_APIKEY_BOB: the API key is empty"],
    [{ AUTHORIZATION_APIKEY: "sha256:xyz" }, "AUTHORIZATION_APIKEY: sha256: must be followed by 64 hex digits"],
    [{ USER_MODEL_METRICS_WEBHOOK_URL: "ftp://x" }, "USER_MODEL_METRICS_WEBHOOK_URL: \"ftp://x\" is not an http(s) URL"],
    [{ AUTHORIZATION_LOG_LEVEL: "loud" }, "AUTHORIZATION_LOG_LEVEL:"],
    [{ OLLAMA_MANAGED: "maybe" }, "OLLAMA_MANAGED:"],
    [{ SHUTDOWN_TIMEOUT: "soon" }, "SHUTDOWN_TIMEOUT:"],
    [{ WEBHOOK_TIMEOUT: "0" }, "WEBHOOK_TIMEOUT: \"0\" must be longer than 0"],
    [{ WEBHOOK_CONCURRENCY: "0" }, "WEBHOOK_CONCURRENCY:"],
    [{ REQUIRE_GPU: "please" }, "REQUIRE_GPU:"],
    [{ HEALTH_CHECK_PATH: "health" }, "HEALTH_CHECK_PATH: \"health\" is not a path"],
    [{ HEALTH_CHECK_PATH: "/health?x=1" }, "HEALTH_CHECK_PATH:"],
    [{ HEALTH_CHECK_PATH: "/metrics" }, "HEALTH_CHECK_PATH: \"/metrics\" is taken"],
    [{ HEALTH_CHECK_PATH: "/api/tags" }, "HEALTH_CHECK_PATH: \"/api/tags\" is taken"],
    [{ HEALTH_CHECK_PATH: "/v1/" }, "HEALTH_CHECK_PATH:"],
    [{ OLLAMA_LOAD_TIMEOUT: "an hour" }, "OLLAMA_LOAD_TIMEOUT:"],
    [{ REQUEST_HEADERS_TIMEOUT: "0" }, "REQUEST_HEADERS_TIMEOUT: \"0\" must be longer than 0"],
    [{ REQUEST_BODY_TIMEOUT: "a minute" }, "REQUEST_BODY_TIMEOUT:"],
    [{ MAX_CONNECTIONS: "-5" }, "MAX_CONNECTIONS: \"-5\" is not a positive integer"],
    [{ MAX_CONNECTIONS_PER_ADDRESS: "0" }, "MAX_CONNECTIONS_PER_ADDRESS:"],
    [{ TRUSTED_PROXIES: "10.0.0.0/33" }, "TRUSTED_PROXIES: \"10.0.0.0/33\" is not an IP address or CIDR block"],
    [{ TRUSTED_PROXIES: "10.0.0.1, proxy.internal" }, "TRUSTED_PROXIES: \"proxy.internal\" is not"],
    [{ TRUSTED_PROXIES: "fe80::1%eth0" }, "TRUSTED_PROXIES:"],
    [{ TRUSTED_PROXIES: "10.0.0.0/" }, "TRUSTED_PROXIES:"],
    [{ QUEUE_SLOTS: "two" }, "QUEUE_SLOTS: \"two\" is not a whole number"],
    [{ OLLAMA_NUM_PARALLEL: "-1" }, "OLLAMA_NUM_PARALLEL:"],
    [{ QUEUE_MAX_WAIT: "0" }, "QUEUE_MAX_WAIT: \"0\" must be longer than 0"],
    [{ QUEUE_MAX_PER_KEY: "0" }, "QUEUE_MAX_PER_KEY:"],
    [{ QUEUE_MAX: "lots" }, "QUEUE_MAX:"]
  ])("rejects %o with one line naming the variable", (env, expected) => {
    const message = failure(env)
    expect(message).toContain(expected)
    expect(message).not.toContain("\n")
  })

  it("never puts a key in an error message", () => {
    expect(failure({ AUTHORIZATION_APIKEY: "sha256:supersecret" })).not.toContain("supersecret")
  })

  it("parses durations as 500ms, 10s, 2m or plain seconds", () => {
    const ms = (s: string) => Duration.toMillis(Either.getOrThrow(parseDuration(s)))
    expect([ms("500ms"), ms("10s"), ms("2m"), ms("1h"), ms("3"), ms("1.5")]).toEqual([500, 10_000, 120_000, 3_600_000, 3000, 1500])
    expect(Either.isLeft(parseDuration("10 parsecs"))).toBe(true)
  })

  it.effect("is a layer reading the given environment", () =>
    Effect.gen(function*() {
      const config = yield* ServerConfig
      expect(config.port).toBe(1234)
    }).pipe(Effect.provide(configFromEnv({ PORT: "1234" }))))
})

describe("each slice", () => {
  // One member of every family a slice declares (AUTHORIZATION_APIKEY_PROBE...), with a value each accepts.
  const probeOf = (family: string) => `${family.slice(0, -1)}_PROBE`
  const probes = Object.fromEntries(CONFIG_VARIABLES.filter((v) => v.endsWith("*")).map((v) => [probeOf(v), "probe-0123"]))

  it.each(CONFIG_SLICES.map((slice) => [slice.key, slice] as const))("%s reads exactly the variables it declares", (_, slice) => {
    const looked = new Set<string>()
    let listed = false
    const env = new Proxy(probes, {
      get: (target, name) => {
        if (typeof name === "string") looked.add(name)
        return Reflect.get(target, name)
      },
      ownKeys: (target) => {
        listed = true
        return Reflect.ownKeys(target)
      }
    })
    // Built afresh (not the instance the others' build shares), on the recording environment; the
    // slices it derives from (the request policy takes the preloaded models) on another.
    const own: Layer.Layer<never, AppConfigError, Environment | PreloadConfig> = slice.layer
    const layer = Layer.fresh(own).pipe(Layer.provide(configFromEnv({})), Layer.provide(Environment.layer(env)))
    Layer.build(layer).pipe(Effect.scoped, Effect.runSync)
    const families = slice.variables.filter((v) => v.endsWith("*"))
    expect([...looked].sort()).toEqual([...slice.variables.filter((v) => !v.endsWith("*")), ...families.map(probeOf)].sort())
    // Only a slice with a family lists the environment's names.
    expect(listed).toBe(families.length > 0)
  })

  it("is the only one to read its variables", () => {
    const names = CONFIG_SLICES.flatMap((slice) => slice.variables)
    expect(names.filter((name, i) => names.indexOf(name) !== i)).toEqual([])
    expect(names).toEqual(CONFIG_VARIABLES)
  })
})

describe("RunPod", () => {
  it("answers the health check on /ping, and on HEALTH_CHECK_PATH too", () => {
    expect(sliceOf(ServerConfig).healthPaths).toEqual(["/ping"])
    expect(sliceOf(ServerConfig, { HEALTH_CHECK_PATH: " /health/ " }).healthPaths).toEqual(["/ping", "/health"])
    expect(sliceOf(ServerConfig, { HEALTH_CHECK_PATH: "/ping" }).healthPaths).toEqual(["/ping"])
    expect(sliceOf(ServerConfig, { HEALTH_CHECK_PATH: "/" }).healthPaths).toEqual(["/ping", "/"])
    expect(sliceOf(ServerConfig, { HEALTH_CHECK_PATH: "/healthz/ready" }).healthPaths).toEqual(["/ping", "/healthz/ready"])
  })

  it("requires no GPU unless REQUIRE_GPU says so", () => {
    expect(sliceOf(PreloadConfig).requireGpu).toBe(false)
    expect(sliceOf(PreloadConfig, { REQUIRE_GPU: "true" }).requireGpu).toBe(true)
  })

  it("reads the worker's identity once, leaving out what is not set", () => {
    expect(sliceOf(WorkerConfig)).toEqual({})
    expect(sliceOf(WorkerConfig, { RUNPOD_POD_ID: "abc123xyz", RUNPOD_ENDPOINT_ID: "ep42", RUNPOD_DC_ID: "" })).toEqual({
      runpod_pod_id: "abc123xyz",
      runpod_endpoint_id: "ep42"
    })
  })

  it("takes Ollama's slots from QUEUE_SLOTS, else OLLAMA_NUM_PARALLEL (0 counting as Ollama's 1), else 1", () => {
    const queue = (env: Record<string, string>) => sliceOf(QueueConfig, env)
    expect(queue({})).toMatchObject({ slots: 1, maxPerKey: 100, maxWaiting: 512 })
    expect(Duration.toMillis(queue({}).maxWait)).toBe(60_000)
    expect(queue({ OLLAMA_NUM_PARALLEL: "4" }).slots).toBe(4)
    expect(queue({ OLLAMA_NUM_PARALLEL: "0" }).slots).toBe(1)
    expect(queue({ OLLAMA_NUM_PARALLEL: "4", QUEUE_SLOTS: "2" }).slots).toBe(2)
    expect(queue({ OLLAMA_NUM_PARALLEL: "4", QUEUE_SLOTS: "0" }).slots).toBe(0)
  })

  it("gives Ollama an hour for a stalled load unless OLLAMA_LOAD_TIMEOUT says otherwise", () => {
    const byDefault = sliceOf(OllamaConfig).ollamaLoadTimeout
    expect([Duration.toMillis(byDefault.duration), byDefault.fromUser]).toEqual([3_600_000, false])
    const given = sliceOf(OllamaConfig, { OLLAMA_LOAD_TIMEOUT: "10m" }).ollamaLoadTimeout
    expect([Duration.toMillis(given.duration), given.fromUser]).toEqual([600_000, true])
  })

  it("reads OLLAMA_LOAD_TIMEOUT by Ollama's rules: a Go duration or seconds, 0 or less for ever", () => {
    const ms = (s: string) => Duration.toMillis(Either.getOrThrow(parseLoadTimeout(s)))
    expect([ms("90m"), ms("1h30m"), ms("1.5h"), ms("500ms"), ms("600"), ms("+30")]).toEqual([
      5_400_000,
      5_400_000,
      5_400_000,
      500,
      600_000,
      30_000
    ])
    expect([ms("0"), ms("-1"), ms("-5m")]).toEqual([Infinity, Infinity, Infinity])
    expect(Either.isLeft(parseLoadTimeout("10 minutes"))).toBe(true)
    expect(Either.isLeft(parseLoadTimeout("1d"))).toBe(true)
  })
})

describe("OLLAMA_HOST, by Ollama's rules", () => {
  it.each([
    ["", "127.0.0.1", "127.0.0.1", 11434, "http://127.0.0.1:11434"],
    ["1.2.3.4", "1.2.3.4", "1.2.3.4", 11434, "http://1.2.3.4:11434"],
    [":1234", "", "127.0.0.1", 1234, "http://127.0.0.1:1234"],
    ["0.0.0.0:5000", "0.0.0.0", "127.0.0.1", 5000, "http://127.0.0.1:5000"],
    ["[::1]", "::1", "::1", 11434, "http://[::1]:11434"],
    ["[::]:7000", "::", "::1", 7000, "http://[::1]:7000"],
    ["http://example.com", "example.com", "example.com", 80, "http://example.com:80"],
    ["https://example.com", "example.com", "example.com", 443, "https://example.com:443"],
    ["127.0.0.1:99999", "127.0.0.1", "127.0.0.1", 11434, "http://127.0.0.1:11434"],
    ["localhost:abc", "localhost", "localhost", 11434, "http://localhost:11434"]
  ])("%j", (raw, bindHost, connectHost, port, origin) => {
    const host = parseOllamaHost(raw)
    expect([host.bindHost, host.connectHost, host.port, host.origin]).toEqual([bindHost, connectHost, port, origin])
  })
})

describe("OpenTelemetry variables", () => {
  it("exports nothing by default; the service name defaults to the project's", () => {
    const otel = sliceOf(OtelConfig)
    expect(Option.isNone(otel.traces) && Option.isNone(otel.metrics)).toBe(true)
    expect(otel.serviceName).toBe("ollama-authentication-proxy")
    expect(otel.sampler).toEqual({ kind: "parentbased_always_on" })
  })

  it("derives signal URLs from the base endpoint, signal endpoints win, headers stay redacted", () => {
    const otel = sliceOf(OtelConfig, {
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318/",
      OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: "http://metrics:9000/custom",
      OTEL_EXPORTER_OTLP_HEADERS: "api-key=s%3Dcret,x-team = a ",
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_SERVICE_NAME: "edge-proxy",
      OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=prod,region=eu%2Dwest",
      OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
      OTEL_TRACES_SAMPLER_ARG: "0.25"
    })
    const traces = Option.getOrThrow(otel.traces)
    expect(traces.url.href).toBe("http://collector:4318/v1/traces")
    expect(traces.protocol).toBe("http/json")
    expect(Redacted.value(traces.headers)).toEqual({ "api-key": "s=cret", "x-team": "a" })
    expect(String(traces.headers)).not.toContain("cret")
    expect(Option.getOrThrow(otel.metrics).url.href).toBe("http://metrics:9000/custom")
    expect(otel.serviceName).toBe("edge-proxy")
    expect(otel.resourceAttributes).toEqual({ "deployment.environment": "prod", region: "eu-west" })
    expect(otel.sampler).toEqual({ kind: "parentbased_traceidratio", ratio: 0.25 })
  })

  it("OTEL_SDK_DISABLED and OTEL_TRACES_EXPORTER=none switch export off", () => {
    const base = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" }
    expect(Option.isNone(sliceOf(OtelConfig, { ...base, OTEL_SDK_DISABLED: "true" }).traces)).toBe(true)
    const tracesOff = sliceOf(OtelConfig, { ...base, OTEL_TRACES_EXPORTER: "none" })
    expect([Option.isNone(tracesOff.traces), Option.isSome(tracesOff.metrics)]).toEqual([true, true])
  })

  it.each([
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318" }, "OTEL_EXPORTER_OTLP_ENDPOINT:"],
    [{ OTEL_TRACES_SAMPLER: "sometimes" }, "OTEL_TRACES_SAMPLER:"],
    [{ OTEL_TRACES_SAMPLER_ARG: "1.5" }, "OTEL_TRACES_SAMPLER_ARG:"],
    [{ OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" }, "OTEL_EXPORTER_OTLP_PROTOCOL:"],
    [{ OTEL_SDK_DISABLED: "perhaps" }, "OTEL_SDK_DISABLED:"],
    [{ OTEL_METRIC_EXPORT_INTERVAL: "often" }, "OTEL_METRIC_EXPORT_INTERVAL:"],
    [{ OTEL_EXPORTER_OTLP_HEADERS: "Authorization" }, "OTEL_EXPORTER_OTLP_HEADERS:"]
  ])("rejects %o with one line naming the variable", (env, expected) => {
    const result = load(env)
    if (Either.isRight(result)) throw new Error("expected a configuration error")
    expect(result.left.message).toContain(expected)
    expect(result.left.message).not.toContain("\n")
  })

  it("never echoes an OTLP header value", () => {
    const result = load({ OTEL_EXPORTER_OTLP_HEADERS: "api-key=topsecret,broken" })
    if (Either.isRight(result)) throw new Error("expected a configuration error")
    expect(result.left.message).not.toContain("topsecret")
  })
})
