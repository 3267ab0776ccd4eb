#!/usr/bin/env node
// The breaking-change gate: compares an OpenAPI document (default: the committed
// openapi.json) with the contract of the latest release in contracts/ using Optic's
// breaking-changes rules, and fails on a breaking change unless info.version's major
// number went up. Usage: node check-compatibility.mjs [document] [contracts folder]
// A release's errata (contracts/errata.json) name operations its contract listed
// but the service never answered where the contract said: one missing from the
// document is no removal, and the gate says which it let pass, and why.
// Optic, of the npm tools tried: @pb33f/openapi-changes fetches its Go binary from
// github.com while installing (npm ci fails where GitHub is out of reach, as on CI's
// machines), @azure/oad needs the .NET runtime and compares Swagger 2.0 only, and
// openapi-diff ignores parameters and enums.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const document = resolve(process.argv[2] ?? join(here, "../../openapi.json"));
const contracts = resolve(process.argv[3] ?? join(here, "../../contracts"));

/** A release's version as [major, minor, patch], from a name such as "1.0.0.json". */
function versionOf(name) {
  const match = /^(\d+)\.(\d+)\.(\d+)\.json$/.exec(name);
  return match ? match.slice(1, 4).map(Number) : null;
}

const releases = readdirSync(contracts)
  .map((name) => ({ name, version: versionOf(name) }))
  .filter((release) => release.version !== null)
  .sort((a, b) => a.version[0] - b.version[0] || a.version[1] - b.version[1] || a.version[2] - b.version[2]);
if (releases.length === 0) {
  console.error(`no released contract (such as 1.0.0.json) in ${contracts}`);
  process.exit(2);
}
const latest = releases.at(-1);
const currentDocument = JSON.parse(readFileSync(document, "utf8"));
const current = currentDocument.info.version;
const currentMajor = Number(current.split(".")[0]);
console.log(`comparing ${document} (version ${current}) with the released ${latest.name}`);
if (currentMajor > latest.version[0]) {
  console.log(`major version ${latest.version[0]} -> ${currentMajor}: breaking changes are allowed`);
  process.exit(0);
}

const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/**
 * The released contract, without the operations its errata name that `document`
 * lacks; each one left out is said, with why. An erratum naming an operation the
 * contract does not list is an error: errata correct a release, they add nothing.
 */
function correctedRelease(releasedDocument, errata, document) {
  for (const [operation, why] of Object.entries(errata)) {
    const [method, path] = operation.toLowerCase().split(" ");
    const item = releasedDocument.paths?.[path];
    if (!item?.[method]) {
      console.error(`contracts/errata.json: ${latest.name} has no operation ${operation}`);
      process.exit(2);
    }
    if (document.paths?.[path]?.[method]) {
      continue; // still there: compared as any other
    }
    console.log(`erratum of ${latest.name}: ${operation} left out of the comparison: ${why}`);
    delete item[method];
    if (!METHODS.some((key) => key in item)) {
      delete releasedDocument.paths[path];
    }
  }
  return releasedDocument;
}

const errataFile = join(contracts, "errata.json");
const errata = existsSync(errataFile)
  ? (JSON.parse(readFileSync(errataFile, "utf8"))[latest.name.replace(/\.json$/, "")] ?? {})
  : {};
const corrected = correctedRelease(
  JSON.parse(readFileSync(join(contracts, latest.name), "utf8")),
  errata,
  currentDocument,
);
// Under CI, Optic writes ci-run-details.json into its working folder: a scratch one.
const scratch = mkdtempSync(join(tmpdir(), "petsage-optic-"));
const released = join(scratch, latest.name);
writeFileSync(released, JSON.stringify(corrected, null, 2));
const optic = spawnSync(
  join(here, "node_modules/.bin/optic"),
  ["diff", released, document, "--check", "--standard", join(here, "optic-standard.yml")],
  {
    cwd: scratch,
    stdio: "inherit",
    // Optic reports usage to its makers unless told not to.
    env: { ...process.env, OPTIC_TELEMETRY_LEVEL: "off" },
  },
);
rmSync(scratch, { recursive: true, force: true });
if (optic.status !== 0) {
  console.error(
    `breaking changes against ${latest.name}: keep the old behaviour, or raise the major version`,
  );
}
process.exit(optic.status ?? 1);
