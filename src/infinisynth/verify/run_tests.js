// The JavaScript test harness inside the sandbox: run /sandbox/solution.js, then /sandbox/tests.js,
// as two scripts of one realm (top-level functions, classes and consts of the solution are visible
// to the tests), then every test registered with node:test's `test`/`it`/`describe`, in order.
//
// Prints one line at the end, `@@infinisynth-tests TOKEN {"status", "detail"}`, with the token the
// runner wrote to /sandbox/token: `passed`; `failed` with the first failing assertion (its line in
// the tests and the message); `error` with any other exception. A program that ends before the
// tests did prints no such line, so it cannot pass (same contract as run_tests.py).
//
// `require("node:test")` is answered by a small registry here, not node's runner: node's runner
// reports asynchronously in its own format, while the verdict must name the first failing
// assertion. `require` and `assert` are globals for the tests.
//
// Run by infinisynth.verify.execute as `node /sandbox/run_tests.js` inside bubblewrap.
"use strict";

const fs = require("fs");
const vm = require("vm");
const realRequire = require;

const token = fs.readFileSync("/sandbox/token", "utf8").trim();
const sources = {
  "solution.js": fs.readFileSync("/sandbox/solution.js", "utf8"),
  "tests.js": fs.readFileSync("/sandbox/tests.js", "utf8"),
};
const write = process.stdout.write.bind(process.stdout);
let reported = false;

function report(status, detail) {
  if (reported) return;
  reported = true;
  const line = `\n@@infinisynth-tests ${token} ${JSON.stringify({ status, detail: String(detail).slice(0, 2000) })}\n`;
  // Synchronous: the process ends right after, and pending timers must not keep it alive.
  fs.writeSync(1, line);
  process.exit(0);
}

const registered = [];
function register(name, options, fn) {
  const body = typeof options === "function" ? options : fn;
  registered.push({ name: String(name), fn: body || (() => {}) });
}
const shim = Object.assign(register, { test: register, it: register, describe: register, suite: register });
shim.default = shim;

function sandboxRequire(name) {
  if (name === "node:test" || name === "test") return shim;
  return realRequire(name);
}

function where(error) {
  const stack = String((error && error.stack) || "");
  const found = /(tests|solution)\.js:(\d+)/.exec(stack);
  if (!found) return null;
  const file = `${found[1]}.js`;
  const line = Number(found[2]);
  const text = (sources[file].split("\n")[line - 1] || "").trim();
  return { file, line, text };
}

function isAssertion(error) {
  return error && (error.code === "ERR_ASSERTION" || error.name === "AssertionError");
}

function verdict(error) {
  const place = where(error);
  if (isAssertion(error)) {
    const message = String(error.message || "").split("\n").filter(Boolean).slice(0, 3).join(" ");
    const head = place ? `${place.file} line ${place.line}: ${place.text}` : "tests.js";
    report("failed", `${head}${message ? ": " + message : ""}`);
  } else {
    const name = (error && error.name) || typeof error;
    const message = error && error.message !== undefined ? error.message : String(error);
    report("error", `${name}: ${message}` + (place ? ` (${place.file} line ${place.line})` : ""));
  }
}

process.on("uncaughtException", verdict);
process.on("unhandledRejection", verdict);
// One stream: the runner bounds stdout, so a flood on stderr is caught the same way.
process.stderr.write = write;

async function main() {
  globalThis.require = sandboxRequire;
  globalThis.assert = realRequire("assert");
  globalThis.module = { exports: {} };
  globalThis.exports = globalThis.module.exports;
  vm.runInThisContext(sources["solution.js"], { filename: "solution.js" });
  vm.runInThisContext(sources["tests.js"], { filename: "tests.js" });
  for (const { fn } of registered) {
    await fn({ test: register, it: register });
  }
  report("passed", "every test ran");
}

main().catch(verdict);
