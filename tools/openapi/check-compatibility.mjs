#!/usr/bin/env node
// The breaking-change gate: compares an OpenAPI document (default: the committed
// openapi.json) with the contract of the latest release in contracts/ using Optic's
// breaking-changes rules, and fails on a breaking change unless info.version's major
// number went up. Usage: node check-compatibility.mjs [document] [contracts folder]
// Optic, of the npm tools tried: @pb33f/openapi-changes fetches its Go binary from
// github.com while installing (npm ci fails where GitHub is out of reach, as on CI's
// machines), @azure/oad needs the .NET runtime and compares Swagger 2.0 only, and
// openapi-diff ignores parameters and enums.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
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
const released = join(contracts, latest.name);
const current = JSON.parse(readFileSync(document, "utf8")).info.version;
const currentMajor = Number(current.split(".")[0]);
console.log(`comparing ${document} (version ${current}) with the released ${latest.name}`);
if (currentMajor > latest.version[0]) {
  console.log(`major version ${latest.version[0]} -> ${currentMajor}: breaking changes are allowed`);
  process.exit(0);
}

// Under CI, Optic writes ci-run-details.json into its working folder: a scratch one.
const scratch = mkdtempSync(join(tmpdir(), "petsage-optic-"));
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
