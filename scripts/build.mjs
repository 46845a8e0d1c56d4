// Bundles the service into one file that runs with plain `node dist/main.js`, no node_modules.
import { build } from "esbuild"
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs"
import path from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
const pkg = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8"))

// `undici` resolves to scripts/undici-slim.mjs: the parts the service uses, not all of undici.
const slimUndici = {
  name: "undici-slim",
  setup(build) {
    build.onResolve({ filter: /^undici$/ }, () => ({ path: path.join(root, "scripts", "undici-slim.mjs") }))
  }
}

const result = await build({
  absWorkingDir: root,
  entryPoints: ["src/main.ts"],
  outfile: "dist/main.js",
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  minifySyntax: true,
  sourcemap: "linked",
  legalComments: "none",
  define: { __APP_VERSION__: JSON.stringify(pkg.version) },
  // Some bundled CommonJS dependencies call require() for Node built-ins.
  banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
  logLevel: "warning",
  plugins: [slimUndici],
  write: false
})
// Each file is written beside its place and renamed into it: a proxy started meanwhile (the demo
// builds while tests run the bundle) reads the old file or the new one, never half of one.
for (const file of result.outputFiles) {
  mkdirSync(path.dirname(file.path), { recursive: true })
  const partial = `${file.path}.${process.pid}.partial`
  writeFileSync(partial, file.contents)
  renameSync(partial, file.path)
}
