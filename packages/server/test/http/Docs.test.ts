/** The published OpenAPI document and Swagger UI, and unknown routes. */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { call, expectError, layerOptions, layer as serverLayer } from "./Loopback.js"

/** Every path and method of CONTRACT.md, in OpenAPI spelling. */
const contract: ReadonlyArray<readonly [string, string]> = [
  ["get", "/health"],
  ["post", "/api/v1/auth/register"],
  ["post", "/api/v1/auth/rotate-key"],
  ["get", "/api/v1/auth/me"],
  ["post", "/api/v1/agents"],
  ["get", "/api/v1/agents"],
  ["delete", "/api/v1/agents/{id}"],
  ["post", "/api/v1/agents/{id}/ping"],
  ["post", "/api/v1/friends/request"],
  ["post", "/api/v1/friends/{id}/accept"],
  ["post", "/api/v1/friends/{id}/reject"],
  ["post", "/api/v1/friends/{id}/block"],
  ["delete", "/api/v1/friends/{id}"],
  ["get", "/api/v1/friends"],
  ["get", "/api/v1/contacts/{username}/connections"],
  ["post", "/api/v1/messages/send"],
  ["get", "/api/v1/messages"],
  ["post", "/api/v1/groups"],
  ["get", "/api/v1/groups"],
  ["get", "/api/v1/groups/{id}"],
  ["post", "/api/v1/groups/{id}/invite"],
  ["post", "/api/v1/groups/{id}/join"],
  ["delete", "/api/v1/groups/{id}/leave"],
  ["get", "/api/v1/groups/{id}/members"],
  ["post", "/api/v1/groups/{id}/transfer"],
  ["delete", "/api/v1/groups/{id}"],
  ["post", "/api/v1/policies"],
  ["get", "/api/v1/policies"],
  ["patch", "/api/v1/policies/{id}"],
  ["delete", "/api/v1/policies/{id}"]
]

type Operation = {
  readonly security?: ReadonlyArray<Record<string, unknown>>
  readonly responses: Record<string, unknown>
  readonly requestBody?: { readonly content: Record<string, { readonly schema: unknown }> }
}

layer(serverLayer(), layerOptions)("API documents over HTTP", (it) => {
  it.effect("GET /api/v1/openapi.json is an OpenAPI 3 document listing every contract path", () =>
    Effect.gen(function* () {
      const response = yield* call("GET", "/api/v1/openapi.json")
      expect(response.status).toBe(200)
      expect(response.contentType).toMatch(/application\/json/)
      const document = response.body as { openapi: string; info: { title: string }; paths: Record<string, Record<string, Operation>> }
      expect(document.openapi).toMatch(/^3\./)
      expect(document.info.title).toBe("Mahilo Registry API")
      const missing = contract.filter(([method, path]) => document.paths[path]?.[method] === undefined)
      expect(missing).toEqual([])
    }))

  it.effect("the document states the contract's statuses and auth: 201 on creation, bearer security, {error, code} errors", () =>
    Effect.gen(function* () {
      const document = (yield* call("GET", "/api/v1/openapi.json")).body as {
        paths: Record<string, Record<string, Operation>>
        components: { securitySchemes: Record<string, { type: string; scheme?: string }> }
      }
      const op = (method: string, path: string) => document.paths[path]![method]!
      expect(Object.keys(op("post", "/api/v1/auth/register").responses)).toEqual(expect.arrayContaining(["201", "400", "409"]))
      expect(Object.keys(op("post", "/api/v1/agents").responses)).toEqual(expect.arrayContaining(["200", "201", "400"]))
      expect(Object.keys(op("post", "/api/v1/friends/request").responses)).toEqual(
        expect.arrayContaining(["200", "201", "400", "403", "404", "409"])
      )
      expect(Object.keys(op("post", "/api/v1/policies").responses)).toEqual(expect.arrayContaining(["201", "400"]))
      expect(Object.keys(op("delete", "/api/v1/policies/{id}").responses)).toEqual(expect.arrayContaining(["200", "404"]))
      expect(Object.keys(op("get", "/api/v1/auth/me").responses)).toEqual(expect.arrayContaining(["200", "401"]))
      expect(Object.values(document.components.securitySchemes)).toContainEqual(expect.objectContaining({ type: "http", scheme: "bearer" }))
      // Registration and health need no key; the rest do.
      expect(op("post", "/api/v1/auth/register").security ?? []).toEqual([])
      expect(op("get", "/health").security ?? []).toEqual([])
      for (const [method, path] of contract.filter(([, p]) => p !== "/health" && p !== "/api/v1/auth/register")) {
        expect(op(method, path).security, `${method} ${path}`).not.toEqual([])
        expect(op(method, path).security, `${method} ${path}`).toBeDefined()
      }
      const body = op("post", "/api/v1/agents").requestBody!.content["application/json"]!.schema as {
        properties?: Record<string, { enum?: ReadonlyArray<string> }>
        required?: ReadonlyArray<string>
      }
      // The contract: framework, label, public_key and public_key_alg ("ed25519"|"x25519") are required.
      expect([...(body.required ?? [])].sort()).toEqual(["framework", "label", "public_key", "public_key_alg"])
      expect(body.properties?.["public_key_alg"]?.enum).toEqual(["ed25519", "x25519"])
      const properties = Object.keys(body.properties ?? {})
      expect(properties).toEqual(expect.arrayContaining([
        "framework",
        "label",
        "description",
        "capabilities",
        "routing_priority",
        "callback_url",
        "callback_secret",
        "public_key",
        "public_key_alg",
        "rotate_secret"
      ]))
    }))

  it.effect("GET /docs serves the Swagger UI as HTML", () =>
    Effect.gen(function* () {
      const response = yield* call("GET", "/docs")
      expect(response.status).toBe(200)
      expect(response.contentType).toMatch(/text\/html/)
      expect(response.text).toMatch(/swagger/i)
    }))

  it.effect("an unknown route answers 404 {error, code}", () =>
    Effect.gen(function* () {
      expectError(yield* call("GET", "/api/v1/nope"), 404, "NOT_FOUND")
      expectError(yield* call("POST", "/api/v1/agents/a/b/c", { body: {} }), 404, "NOT_FOUND")
    }))
})
