// node-llama-cpp for the llama.cpp peer scripts (llamacpp_check.mjs, llamacpp_ppl.mjs,
// llamacpp_speed.mjs): the package is found in $SHRINK_ORT_NODE_DIR, else <repo>/.npm-ort
// (scripts/setup.sh installs it there), and imported by path since it is ESM only. Throws when
// it is missing.
import fs from "node:fs";
import path from "node:path";
import {fileURLToPath, pathToFileURL} from "node:url";

export async function loadNodeLlamaCpp() {
  const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
  const npmDir = process.env.SHRINK_ORT_NODE_DIR || path.join(repo, ".npm-ort");
  const pkg = path.join(npmDir, "node_modules", "node-llama-cpp");
  let main;
  try {
    main = JSON.parse(fs.readFileSync(path.join(pkg, "package.json"), "utf8")).exports["."];
  } catch (e) {
    throw new Error(`node-llama-cpp not found under ${npmDir} (run scripts/setup.sh): ${e.message}`);
  }
  const entry = typeof main === "string" ? main : (main.import || main.default || main.node);
  return import(pathToFileURL(path.join(pkg, entry)).href);
}
