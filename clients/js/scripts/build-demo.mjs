// Bundles the demo page (demo/main.ts and the client it imports) into the service's static files:
// app/static/demo/demo.js, committed so that `make run` needs no Node. `--check` only compares.
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const target = resolve(root, "../../app/static/demo/demo.js");

export async function bundle() {
  const result = await build({
    entryPoints: [resolve(root, "demo/main.ts")],
    bundle: true,
    format: "esm",
    target: "es2020",
    write: false,
    legalComments: "none",
    banner: { js: "// Built from clients/js/demo/main.ts and clients/js/src by `make client`; do not edit." },
  });
  return result.outputFiles[0].text;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const text = await bundle();
  if (process.argv.includes("--check")) {
    if (readFileSync(target, "utf8") !== text) {
      console.error(`${target} is out of date: run make client`);
      process.exit(1);
    }
  } else {
    writeFileSync(target, text);
    console.log(`wrote ${target} (${text.length} bytes)`);
  }
}
