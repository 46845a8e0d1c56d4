# ollama-authentication-proxy: Ollama and the proxy in one container, nothing else.
# The proxy is PID 1's only child; it starts, supervises and stops `ollama serve` itself.
# Node 24 LTS: the maintained line (20 reached end of life on 2026-04-30). The tests run the bundle
# on this same version (scripts/node-runtime.mjs fetches it from the npm registry).
ARG NODE_VERSION=24.22.3
ARG OLLAMA_VERSION=0.32.15

# ---- build: the single-file bundle ----
FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts ./scripts
COPY src ./src
RUN npm run build

# ---- the Node runtime, nothing else from this image ----
FROM node:${NODE_VERSION}-bookworm-slim AS node

# ---- final: the official Ollama image plus node and one JavaScript file ----
FROM ollama/ollama:${OLLAMA_VERSION}
ARG OLLAMA_VERSION
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ollama-authentication-proxy" \
      org.opencontainers.image.description="Ollama behind an API-key proxy with streaming, usage webhook, /ping for RunPod, OpenTelemetry" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/ollama/ollama:${OLLAMA_VERSION}"

# tini reaps the runner processes Ollama leaves behind and forwards SIGTERM to the proxy.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=build /src/dist/main.js /app/main.js

# Ollama listens on loopback only: every outside request goes through the proxy's key check.
ENV PORT=80 \
    OLLAMA_HOST=127.0.0.1:11434 \
    OLLAMA_BIN=/bin/ollama \
    NODE_ENV=production
EXPOSE 80
# Healthy means ready (200): pulling and loading models may take minutes, hence the start period.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10m --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT_HEALTH||process.env.PORT||80)+'/ping').then(r=>process.exit(r.status===200?0:1),()=>process.exit(1))"]
# Root, as in the Ollama image: GPU device nodes, RunPod's root-owned network volume and
# Ollama's $HOME/.ollama all expect it. See README "Running as another user".
# --no-memory-reducer: the flags of scripts/node-flags.mjs, which says why (node refuses them in NODE_OPTIONS).
ENTRYPOINT ["/usr/bin/tini", "--", "node", "--no-memory-reducer", "/app/main.js"]
CMD []
