import { createRequire } from "node:module";
const require = createRequire(new URL("../../tools/eslint/package.json", import.meta.url));
const js = require("@eslint/js");
const globals = require("globals");
const tseslint = require("typescript-eslint");
export default [
  { files: ["**/*.js", "**/*.ts"], rules: { "no-undef": "error", "no-dupe-keys": "error" },
    languageOptions: { globals: { ...globals.browser, ...globals.node } } },
  { files: ["**/*.ts"], languageOptions: { parser: tseslint.parser } },
];
