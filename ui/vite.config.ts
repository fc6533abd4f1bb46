import { defineConfig } from "vite";

// The console is served by the gateway at /ui; `make ui` builds it into the Python package so
// that installing or serving lmaas needs no Node.js.
export default defineConfig({
  base: "/ui/",
  esbuild: { jsx: "automatic", jsxImportSource: "preact" },
  build: {
    outDir: "../src/lmaas/gateway/ui/static",
    emptyOutDir: true,
    assetsDir: "assets",
    target: "es2020",
    sourcemap: false,
    // No inline script or style: the Content-Security-Policy allows this origin's files only.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    chunkSizeWarningLimit: 400,
  },
  server: {
    // `npx vite` during development: the API of a local `lmaas serve`.
    proxy: { "/admin": "http://127.0.0.1:8000", "/v1": "http://127.0.0.1:8000" },
  },
});
