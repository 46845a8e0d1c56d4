// The V8 flags the proxy runs with, wherever it is started: the Dockerfile's ENTRYPOINT and
// `npm start` spell them out (test/Docker.test.ts checks they match this list); the demo, the
// process tests and the benchmarks import them from here.
//
// --no-memory-reducer: after ~8 s without load V8's memory reducer shrinks the heap and leaves it
// growing by ~10% per full GC. The next burst of streams then runs a full GC every ~70 ms for
// seconds: measured on the stream benchmark, 30-50% more CPU per response and twice the p99
// latency, for a heap that is back to its old size a moment later. A worker that idles between
// bursts (RunPod) hits exactly that. Measured, the idle RSS after load was the same either way.
export const NODE_FLAGS = ["--no-memory-reducer"]
