// Validates the Kubernetes objects of YAML files with the kubernetes-models packages, whose
// validate() checks an object against the published schemas: the Prometheus Operator and Argo CD
// CRDs (which kubernetes-validate has no schema for), and the built-in kinds as a second opinion.
// Usage: node validate-models.mjs NODE_MODULES_DIR FILE.yaml...   (exit 1 if any object fails)
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";

const [dir, ...files] = process.argv.slice(2);
const nodeModules = resolve(dir);
const YAML = createRequire(join(nodeModules, "noop.js"))("yaml");

// The package holding the models of an API group.
const packageOf = (group) =>
  ({
    "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
    "argoproj.io": "@kubernetes-models/argo-cd",
  })[group] ?? "kubernetes-models";

// The packages are ESM: import the group/version module by path and take the kind's class.
async function modelOf(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const pkg = packageOf(group);
  const module = join(nodeModules, pkg, group ? `${group}/${version}` : version, "index.js");
  try {
    return { pkg, Model: (await import(module))[kind] };
  } catch {
    return { pkg };
  }
}

let passed = 0;
let failed = 0;
const fail = (where, why) => {
  console.error(`FAIL ${where}: ${why}`);
  failed++;
};

for (const file of files) {
  for (const doc of YAML.parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length) {
      fail(file, doc.errors.map((e) => e.message).join("; "));
      continue;
    }
    const object = doc.toJS();
    if (object == null) continue; // an empty document between two "---"
    const where = `${file}: ${object.kind}/${object.metadata?.name}`;
    const { pkg, Model } = await modelOf(String(object.apiVersion), object.kind);
    if (!Model) {
      fail(where, `${pkg} has no model for ${object.apiVersion} ${object.kind}`);
      continue;
    }
    try {
      new Model(object).validate();
      console.log(`ok   ${where} (${pkg})`);
      passed++;
    } catch (error) {
      fail(where, error.message);
    }
  }
}
console.log(`models: ${passed} passed, ${failed} failed`);
process.exit(failed || passed === 0 ? 1 : 0);
