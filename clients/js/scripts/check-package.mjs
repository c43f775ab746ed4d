// The client as a new app gets it: `npm pack` (whose prepack builds dist/ afresh), then, in fresh
// directories outside the repository:
//   1. the tarball holds every file its package.json points at (exports, main, types), each entry
//      names its "types" first, a .d.ts sits beside every .js, and nothing of the tests or build;
//   2. an app without React (`npm init -y`, then the tarball alone): npm installs no React (the
//      peer dependency is optional); the main entry imports in node and consumer.ts type-checks
//      (its declarations need no React);
//   3. an app with React (package-check/: package.json and lockfile, `npm ci`, then the tarball
//      with --no-save): the declaration maps lead to sources in the tarball; each entry imports in
//      node as an ES module and exports exactly the names in package-check/exports.json;
//      consumer.ts and consumer-react.tsx type-check against the package's declarations, strict,
//      with moduleResolution bundler and node16, by TypeScript 7 and 5.
// Run by `make test-js` (`npm run test:package`). The first run downloads the fixture's packages;
// later ones come from npm's cache (--prefer-offline; npm_config_offline=true works too).
// `--keep` leaves the directories; after a failure they are left anyway.
import { execFile } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const fixture = join(root, "package-check");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const expected = JSON.parse(readFileSync(join(fixture, "exports.json"), "utf8"));
const entries = Object.keys(expected).filter((key) => key !== "//");
const keep = process.argv.includes("--keep");
const npmFlags = ["--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error"];

const started = performance.now();
const tmp = mkdtempSync(join(tmpdir(), "realtime-package-"));
const failures = [];

/** Done: how long it took, and when (the apps are set up side by side). */
function timed(label, since) {
  const now = performance.now();
  console.log(`  ${label} (${((now - since) / 1000).toFixed(1)} s, at ${((now - started) / 1000).toFixed(1)} s)`);
}

/** node's error, without the stack. */
function nodeError(output) {
  return output.split("\n").filter((line) => /Error/.test(line)).join("\n") || output;
}

/** The first lines of a tool's complaint. */
function head(output, lines = 12) {
  const all = output.split("\n");
  return all.slice(0, lines).join("\n") + (all.length > lines ? `\n  ... ${all.length - lines} more lines` : "");
}

/** Its stdout; where it fails, throws, or with `quiet` returns `{ output }` (stdout and stderr). */
function run(cmd, args, cwd, { quiet = false } = {}) {
  return new Promise((resolveRun, rejectRun) => {
    execFile(cmd, args, { cwd, encoding: "utf8", maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
      if (!error) return resolveRun(stdout);
      const output = `${stdout}${stderr}`.trim();
      if (quiet) resolveRun({ output });
      else rejectRun(new Error(`${cmd} ${args.join(" ")} (in ${cwd}) failed:\n${output}`));
    });
  });
}

function fail(message) {
  failures.push(message);
  console.error(`FAIL ${message}`);
}

/** Every file a package.json points at: exports (all conditions), main, module, types. */
function targets(manifest) {
  const found = [];
  const walk = (value) => {
    if (typeof value === "string") found.push(value);
    else if (value && typeof value === "object") Object.values(value).forEach(walk);
  };
  walk(manifest.exports);
  for (const field of ["main", "module", "types", "typings"]) if (manifest[field]) found.push(manifest[field]);
  return [...new Set(found.map((path) => path.replace(/^\.\//, "")))];
}

/** 1. Pack, and look inside. */
async function pack() {
  const since = performance.now();
  const output = await run("npm", ["pack", "--json", "--pack-destination", tmp, "--loglevel=error"], root);
  const packed = JSON.parse(output.slice(output.indexOf("[")))[0]; // after what prepack printed
  const files = new Set(packed.files.map((file) => file.path));
  for (const target of targets(pkg)) {
    if (target.includes("*")) fail(`package.json points at a pattern (${target}): list the entries`);
    else if (!files.has(target)) fail(`package.json points at ${target}, which is not in the tarball (files: ${JSON.stringify(pkg.files)})`);
  }
  for (const entry of entries) {
    const conditions = pkg.exports?.[entry];
    if (!conditions) fail(`the exports map has no "${entry}"`);
    else if (typeof conditions !== "object" || Object.keys(conditions)[0] !== "types")
      fail(`exports["${entry}"] must name its "types" first (TypeScript takes the first condition that matches)`);
  }
  for (const file of files) {
    if (file.startsWith("dist/") && file.endsWith(".js") && !files.has(file.replace(/\.js$/, ".d.ts"))) fail(`${file} has no declarations in the tarball`);
    if (/^(build|test|e2e|demo|package-check|scripts|node_modules)\//.test(file)) fail(`${file} should not be in the tarball`);
  }
  timed(`packed ${packed.filename}: ${packed.files.length} files, ${(packed.size / 1024).toFixed(0)} kB`, since);
  return { tarball: join(tmp, packed.filename), files };
}

/** 2. An app without React; `typescript` is where the other app has it (installed). */
async function withoutReact({ tarball }, typescript) {
  const since = performance.now();
  const app = join(tmp, "app-without-react");
  mkdirSync(app);
  for (const name of ["tsconfig.json", "tsconfig.no-react.json", "consumer.ts"]) cpSync(join(fixture, name), join(app, name));
  await run("npm", ["init", "-y", "--loglevel=error"], app);
  await run("npm", ["install", ...npmFlags, tarball], app);
  if (existsSync(join(app, "node_modules", "react"))) fail("installing the client into an app without React installed React: its peer dependency should be optional");
  const main = await run("node", ["--input-type=module", "-e", `import { connect } from ${JSON.stringify(pkg.name)}; console.log(typeof connect);`], app, { quiet: true });
  if (main !== "function\n") fail(`the main entry does not import in an app without React:\n${head(nodeError(main.output ?? main))}`);
  const tsc = await run("node", [join(await typescript, "bin", "tsc"), "-p", "tsconfig.no-react.json", "--pretty", "false"], app, { quiet: true });
  if (typeof tsc !== "string") fail(`consumer.ts does not type-check in an app without React:\n${head(tsc.output)}`);
  timed("an app without React (npm init -y, the tarball): no React installed; the main entry imports and type-checks", since);
}

/** 3. An app with React, from the committed lockfile. */
async function withReact({ tarball, files }, installed) {
  const since = performance.now();
  const app = join(tmp, "app");
  mkdirSync(app);
  for (const name of ["package.json", "package-lock.json", "tsconfig.json", "consumer.ts", "consumer-react.tsx"]) cpSync(join(fixture, name), join(app, name));
  await run("npm", ["ci", ...npmFlags], app);
  await run("npm", ["install", "--no-save", ...npmFlags, tarball], app);
  installed(join(app, "node_modules", "typescript"));
  timed("an app with React: npm ci, then the tarball", since);
  let part = performance.now();

  // The declaration maps lead to sources the tarball holds (an editor's "go to definition").
  const dir = join(app, "node_modules", ...pkg.name.split("/"));
  for (const file of [...files].filter((name) => name.endsWith(".d.ts.map"))) {
    const map = join(dir, file);
    for (const source of JSON.parse(readFileSync(map, "utf8")).sources)
      if (!existsSync(resolve(dirname(map), source))) fail(`${file} maps to ${source}, which is not in the tarball`);
  }

  await Promise.all(entries.map(async (entry) => {
    const names = expected[entry];
    const specifier = entry === "." ? pkg.name : `${pkg.name}/${entry.replace(/^\.\//, "")}`;
    const source = [
      `import { ${names.join(", ")} } from ${JSON.stringify(specifier)};`,
      `import * as entry from ${JSON.stringify(specifier)};`,
      `void [${names.join(", ")}];`,
      "console.log(JSON.stringify(Object.keys(entry).sort()));",
    ].join("\n");
    const result = await run("node", ["--input-type=module", "-e", source], app, { quiet: true });
    if (typeof result !== "string") {
      return fail(`import { ... } from "${specifier}" fails in node:\n${head(nodeError(result.output))}`);
    }
    const actual = JSON.parse(result);
    const missing = names.filter((name) => !actual.includes(name));
    const extra = actual.filter((name) => !names.includes(name));
    if (missing.length || extra.length)
      fail(`"${specifier}" exports ${JSON.stringify(actual)}; package-check/exports.json expects ${JSON.stringify(names)} (missing: ${missing.join(", ") || "none"}; unexpected: ${extra.join(", ") || "none"})`);
  }));
  timed(`node imports ${entries.join(" and ")} as ES modules, with the expected exports`, part);
  part = performance.now();

  // TypeScript 7 also checks the package's declarations themselves (skipLibCheck false in the
  // fixture's tsconfig); TypeScript 5, an app not on 7 yet, only uses them (it is 2x faster so).
  const checks = [];
  for (const [compiler, tsc, extra] of [["TypeScript 7", "typescript", []], ["TypeScript 5", "typescript-5", ["--skipLibCheck"]]])
    for (const [resolution, flags] of [["bundler", []], ["node16", ["--module", "node16", "--moduleResolution", "node16"]]])
      checks.push(async () => {
        const args = [join(app, "node_modules", tsc, "bin", "tsc"), "-p", "tsconfig.json", "--pretty", "false", ...flags, ...extra];
        const result = await run("node", args, app, { quiet: true });
        if (typeof result !== "string") fail(`${compiler}, moduleResolution ${resolution}: consumer.ts and consumer-react.tsx do not type-check:\n${head(result.output)}`);
      });
  for (let i = 0; i < checks.length; i += 2) await Promise.all(checks.slice(i, i + 2).map((check) => check()));
  timed("TypeScript 7 and 5 type-check consumer.ts and consumer-react.tsx (strict; moduleResolution bundler and node16)", part);
}

try {
  console.log(`package check of ${pkg.name} in ${tmp}`);
  const packed = await pack();
  let installed;
  const typescript = new Promise((resolveTypescript) => (installed = resolveTypescript));
  await Promise.all([withoutReact(packed, typescript), withReact(packed, installed)]);
} catch (error) {
  fail(error.message);
} finally {
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  if (failures.length) {
    console.error(`package check FAILED (${failures.length}) in ${seconds} s; the projects are in ${tmp}`);
    process.exitCode = 1;
  } else {
    if (!keep) rmSync(tmp, { recursive: true, force: true });
    console.log(`package check passed in ${seconds} s${keep ? `; the projects are in ${tmp}` : ""}`);
  }
}
