// @ts-check
// The TypeScript client (openapi-fetch over the types openapi-typescript generates from
// openapi.json, in ./petsage.d.ts) against a running PetSage: run by
// tests/openapi/test_typescript_client.py with PETSAGE_URL and PETSAGE_HEALTH_TOKEN set.
import assert from "node:assert/strict";
import { test } from "node:test";

import createClient from "openapi-fetch";

/** @typedef {import("./petsage.js").paths} paths */
/** @typedef {import("./petsage.js").components["schemas"]} schemas */

const baseUrl = process.env.PETSAGE_URL ?? "http://127.0.0.1:8000";
const token = process.env.PETSAGE_HEALTH_TOKEN ?? "";

/**
 * A PetSage client; with `token`, it sends the health token on every request. Its
 * answers are typed by their JSON media types (`?verbose` text is not asked for).
 * @param {string} [token]
 * @returns {import("openapi-fetch").Client<paths, `application/${string}json`>}
 */
function petsage(token) {
  return createClient({
    baseUrl,
    headers: token ? { Authorization: `Bearer ${token}` } : {},
  });
}

/** @type {schemas["Health"]["status"][]} */
const HEALTHY = ["pass", "warn"];

test("the smoke test answers its documented body", async () => {
  const { data, response } = await petsage().GET("/api/v1/smoke-test");
  assert.equal(response.status, 200);
  /** @type {schemas["SmokeTestResponse"] | undefined} */
  const body = data;
  assert.deepEqual(body, { status: "ok", message: "PetSage smoke test successful!" });
});

test("readiness answers a probe status", async () => {
  const { data, response } = await petsage().GET("/readyz");
  assert.equal(response.status, 200);
  assert.equal(response.headers.get("content-type"), "application/health+json");
  /** @type {schemas["ProbeStatus"] | undefined} */
  const body = data;
  assert.ok(body && HEALTHY.includes(body.status));
});

test("the health document without the token has no check details", async () => {
  const { data, response } = await petsage().GET("/health");
  assert.equal(response.status, 200);
  /** @type {schemas["Health"] | undefined} */
  const health = data;
  assert.ok(health && HEALTHY.includes(health.status));
  assert.equal(health.serviceId, "petsage-backend");
  assert.equal(health.checks, undefined);
});

test("the health document with the token has every check's result", async () => {
  assert.ok(token, "PETSAGE_HEALTH_TOKEN is not set");
  const { data, response } = await petsage(token).GET("/health");
  assert.equal(response.status, 200);
  /** @type {schemas["HealthCheck"][] | undefined} */
  const uptime = data?.checks?.["process:uptime"];
  assert.ok(uptime && uptime.length === 1);
  const [check] = uptime;
  assert.equal(check?.componentId, "uptime");
  assert.ok(check && HEALTHY.includes(check.status));
});
