// ESLint for the static verification gate (docs/LINT_GATE.md): errors only, no style.
// Given with --config, so no eslint.config.* near the sample is looked up; inline
// `/* eslint-disable */`, `/* global */` and `// eslint-disable-line` comments are ignored.
import { createRequire } from "node:module";

// The pinned packages live in tools/eslint (`npm ci`), not next to this file.
const require = createRequire(new URL("../../tools/eslint/package.json", import.meta.url));
const globals = require("globals");
const tseslint = require("typescript-eslint");

// What a JavaScript engine rejects or what certainly throws or misbehaves at run time.
const rules = {
  "no-undef": "error",
  "no-dupe-keys": "error",
  "no-duplicate-case": "error",
  "no-dupe-else-if": "error",
  "no-const-assign": "error",
  "no-class-assign": "error",
  "no-func-assign": "error",
  "no-import-assign": "error",
  "no-obj-calls": "error",
  "no-new-native-nonconstructor": "error",
  "no-this-before-super": "error",
  "constructor-super": "error",
  "no-invalid-regexp": "error",
  "use-isnan": "error",
  "valid-typeof": "error",
  "no-unsafe-negation": "error",
  "no-compare-neg-zero": "error",
  "for-direction": "error",
  "no-loss-of-precision": "error",
};

const sharedGlobals = { ...globals.browser, ...globals.node, ...globals.jest, ...globals.mocha };

export default [
  {
    linterOptions: { noInlineConfig: true, reportUnusedDisableDirectives: "off" },
  },
  {
    files: ["**/*.js", "**/*.jsx", "**/*.mjs", "**/*.cjs"],
    languageOptions: {
      ecmaVersion: "latest",
      sourceType: "module",
      parserOptions: { ecmaFeatures: { jsx: true } },
      globals: sharedGlobals,
    },
    rules: { ...rules, "no-dupe-class-members": "error" },
  },
  {
    files: ["**/*.ts", "**/*.tsx", "**/*.mts", "**/*.cts"],
    languageOptions: {
      parser: tseslint.parser,
      sourceType: "module",
      // Namespaces that come from @types packages rather than from the language.
      globals: { ...sharedGlobals, NodeJS: "readonly", JSX: "readonly" },
    },
    // Overloads are legal TypeScript, so no-dupe-class-members stays off here.
    rules,
  },
];
