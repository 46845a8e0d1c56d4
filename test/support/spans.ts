/**
 * Spans for assertions: an in-memory exporter that keeps what it got after the tracer provider
 * shuts down (the stock one empties itself then), so tests can read spans after a layer closed.
 */
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Layer } from "effect"
import { SpanProcessors } from "../../src/telemetry/Tracing.js"

class KeepingExporter extends InMemorySpanExporter {
  override shutdown() {
    return Promise.resolve()
  }
}

export const spanRecorder = () => {
  const exporter = new KeepingExporter()
  return {
    /** Provide to the app (or Tracing.layer): turns tracing on, exporting to memory. */
    layer: Layer.succeed(SpanProcessors, [new SimpleSpanProcessor(exporter)]),
    spans: (): ReadonlyArray<ReadableSpan> => exporter.getFinishedSpans(),
    named: (name: string) => exporter.getFinishedSpans().filter((s) => s.name === name)
  }
}
