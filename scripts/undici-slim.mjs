// What the bundle takes from undici, and no more: `import ... from "undici"` anywhere in the bundle
// (our code, @effect/platform-node) resolves here (scripts/build.mjs). undici's index also loads
// fetch, WebSocket, the cache store, the mocks and the proxy agents (~600 KB the bundle would parse
// and initialise at every start, for nothing). Measured with bench/coldstart.mjs, see bench/README.md.
// Add an export here before using another part of undici.
import api from "undici/lib/api/index.js"
import errors from "undici/lib/core/errors.js"
import Agent from "undici/lib/dispatcher/agent.js"
import Client from "undici/lib/dispatcher/client.js"
import Dispatcher from "undici/lib/dispatcher/dispatcher.js"
import Pool from "undici/lib/dispatcher/pool.js"
import globalDispatcher from "undici/lib/global.js"

// As undici's index does: request(), stream(), pipeline()... on every dispatcher.
Object.assign(Dispatcher.prototype, api)

export const { getGlobalDispatcher, setGlobalDispatcher } = globalDispatcher
export { Agent, Client, Dispatcher, errors, Pool }
export default { Agent, Client, Dispatcher, Pool, errors, getGlobalDispatcher, setGlobalDispatcher }
