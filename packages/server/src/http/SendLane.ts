/**
 * The send lane: `POST /api/v1/messages/send`, the registry's busiest write,
 * answered beside the Effect HTTP stack instead of through it.
 *
 * Through the stack a send costs about 300 of its 500 runtime operations
 * before and after its own work: the router, the API builder's handler group,
 * five context and fiber-ref copies (route, request, handler group,
 * middleware, caller), the body read and the response encoding. The lane does
 * the same steps, in the same order and with the same functions, on the bare
 * node:http request, and runs only the send itself as an Effect:
 * 1. it takes a request only when it is plainly a send: `POST` to exactly this
 *    path, an `Authorization` header, a JSON (or no) `Content-Type`, a
 *    `Content-Length` within the body limit and no `Transfer-Encoding`;
 *    anything else goes the full way, untouched, so every refusal of a
 *    malformed request is the HTTP API's own;
 * 2. the body's JSON problems (depth, unpaired surrogate escapes, not JSON at
 *    all), as the client-error middleware checks them, before the key;
 * 3. the key, with the API's authenticator (`Auth.bearer`);
 * 4. the payload decoded with the endpoint's schema, an invalid one described
 *    as the API describes it;
 * 5. the send (`MessagesHandlers.makeSend`, the handler the API runs too);
 * 6. the answer encoded with the endpoint's schemas: the same status, body
 *    and headers as the full path, failures included.
 * `test/http/SendLane.test.ts` sends the same requests both ways and compares
 * the answers. The lane is off while tracing is on (`MAHILO_TRACING`: sends
 * get their spans from the stack) and when `MAHILO_SEND_LANE=false`.
 */
import type * as http from "node:http"
import { HttpApiSchema } from "@effect/platform"
import { HttpApiDecodeError } from "@effect/platform/HttpApiError"
import { Bearer, Errors, type Registry } from "@mahilo/core"
import { Cause, Context, Effect, Exit, type Fiber, FiberId, Layer, Option, Runtime, Schema } from "effect"
import { MahiloApi, SendAnswer, SendPayload } from "../Api.js"
import { ServerConfig } from "../Config.js"
import * as Answers from "./Answers.js"
import * as Auth from "./Auth.js"
import { makeSend } from "./MessagesHandlers.js"
import * as RequestBody from "./RequestBody.js"

const PATH = "/api/v1/messages/send"

type Handler = (request: http.IncomingMessage, response: http.ServerResponse) => boolean

/** Where the server's node:http server finds the lane; empty until the API is up. */
export class SendLaneSlot {
  private handler: Handler | undefined
  /** Sends the lane answered so far. */
  taken = 0
  /** The sends running now (their answer not yet given, nor their client gone). */
  readonly running = new Set<Fiber.RuntimeFiber<unknown, unknown>>()

  get inFlight(): number {
    return this.running.size
  }

  /** Answers the request if it is one the lane takes (then `true`). */
  take(request: http.IncomingMessage, response: http.ServerResponse): boolean {
    if (this.handler === undefined || !this.handler(request, response)) return false
    this.taken++
    return true
  }

  attach(handler: Handler): void {
    this.handler = handler
  }

  detach(): void {
    this.handler = undefined
  }
}

export class SendLane extends Context.Tag("@mahilo/server/SendLane")<SendLane, SendLaneSlot>() {
  static readonly layer = Layer.sync(SendLane, () => new SendLaneSlot())
}

/** An API group or endpoint, seen only for the errors it declares. */
type Declares = { readonly errorSchema: Schema.Schema.Any }
type GroupDeclares = Declares & { readonly endpoints: Readonly<Record<string, Declares>> }

/**
 * How the API answers each error it declares anywhere (API, groups, endpoints,
 * middleware), in the order its error encoder tries them: the HTTP API
 * encodes any failure with the union of all of them, so the lane does too,
 * from the same schemas and status annotations. (Schemas are invariant, so the
 * groups' precise types are set aside for this walk.)
 */
const declaredErrors = (() => {
  const schemas = new Set<Schema.Schema.Any>()
  HttpApiSchema.deunionize(schemas, MahiloApi.errorSchema)
  for (const group of Object.values(MahiloApi.groups as Readonly<Record<string, unknown>>) as Array<GroupDeclares>) {
    for (const endpoint of Object.values(group.endpoints)) HttpApiSchema.deunionize(schemas, endpoint.errorSchema)
    HttpApiSchema.deunionize(schemas, group.errorSchema)
  }
  return Array.from(schemas, (schema) => ({
    is: Schema.is(Schema.typeSchema(schema)),
    encode: Schema.encodeUnknownSync(schema as Schema.Schema<unknown, unknown, never>),
    status: HttpApiSchema.getStatusErrorAST(schema.ast)
  }))
})()

const encodeAnswer = Schema.encodeSync(SendAnswer)
const decodePayload = Schema.decodeUnknown(SendPayload)

/** Status and body of a failed send, as the HTTP API encodes them; `undefined` for a defect. */
const failureAnswer = (error: unknown): readonly [number, unknown] | undefined => {
  for (const declared of declaredErrors) {
    if (declared.is(error)) return [declared.status, declared.encode(error)]
  }
  return undefined
}

const writeEmpty = (response: http.ServerResponse, status: number): void => {
  if (response.headersSent || response.destroyed) return
  response.writeHead(status, { "content-length": 0 })
  response.end()
}

const invalid = (response: http.ServerResponse, code: string, error: string) => Answers.json(response, 400, { error, code })

/** Whether the request is plainly a send the lane can answer exactly as the full path would. */
const takes = (request: http.IncomingMessage, limit: number): boolean => {
  if (request.method !== "POST" || request.url !== PATH) return false
  const headers = request.headers
  if (headers.authorization === undefined || headers["transfer-encoding"] !== undefined) return false
  if (!RequestBody.isJsonContentType(headers["content-type"])) return false
  const length = headers["content-length"]
  if (length === undefined || !/^[0-9]{1,12}$/.test(length)) return false
  const bytes = Number(length)
  return bytes > 0 && bytes <= limit
}

/** Attaches the lane to the server's slot for as long as the API is up (not while tracing). */
export const attach = Layer.scopedDiscard(
  Effect.gen(function* () {
    const config = yield* ServerConfig
    if (config.tracing || !config.sendLane) return
    const slot = yield* SendLane
    const authenticator = yield* Auth.AuthenticatorService
    const bearer = Auth.bearer(authenticator)
    const send = yield* makeSend
    const runtime = yield* Effect.runtime<never>()
    const limit = RequestBody.bodyLimit(config.maxPayloadBytes)

    const program = (token: string, json: unknown) =>
      Effect.gen(function* () {
        const principal: Registry.Principal = yield* bearer(token)
        const payload = yield* decodePayload(json).pipe(
          Effect.catchAll((e) =>
            Effect.flatMap(HttpApiDecodeError.fromParseError(e), (decoded) =>
              Errors.InvalidRequest.of("INVALID_REQUEST", RequestBody.describeIssues(decoded))))
        )
        return encodeAnswer(yield* send(principal, payload))
      }).pipe(
        Effect.tapDefect((defect) => Effect.logError("Unhandled defect", Cause.die(defect)))
      )

    const answer = (response: http.ServerResponse, exit: Exit.Exit<unknown, unknown>) => {
      if (Exit.isSuccess(exit)) return Answers.json(response, 200, exit.value)
      const failure = Cause.failureOption(exit.cause)
      const known = Option.isSome(failure) ? failureAnswer(failure.value) : undefined
      if (known !== undefined) return Answers.json(response, known[0], known[1])
      // The server is shutting down (a client that went away reads nothing).
      if (Cause.isInterruptedOnly(exit.cause)) return Answers.notServing(response)
      return writeEmpty(response, 500)
    }

    const handler: Handler = (request, response) => {
      if (!takes(request, limit)) return false
      // As the API's middleware reads it: what follows `Bearer `; another scheme is no key at
      // all (401 UNAUTHORIZED), checked after the body's JSON problems as there.
      const authorization = request.headers.authorization
      const token = Bearer.isBearer(authorization) ? authorization.slice(7) : ""
      const chunks: Array<Buffer> = []
      request.on("data", (chunk: Buffer) => chunks.push(chunk))
      request.on("error", () => response.destroy())
      request.on("end", () => {
        if (RequestBody.isTooLarge(request)) {
          return invalid(response, "PAYLOAD_TOO_LARGE", `The request body is larger than ${limit} bytes`)
        }
        const text = chunks.length === 1 ? chunks[0]!.toString("utf8") : Buffer.concat(chunks).toString("utf8")
        const problem = RequestBody.jsonProblem(text)
        if (problem !== undefined) return invalid(response, "INVALID_REQUEST", problem)
        // Parsed once, here; as the middleware refuses it, a body that is not JSON is refused before the key.
        let json: unknown
        try {
          json = JSON.parse(text)
        } catch {
          return invalid(response, "INVALID_REQUEST", RequestBody.NOT_JSON)
        }
        const fiber = Runtime.runFork(runtime)(program(token, json))
        slot.running.add(fiber)
        fiber.addObserver((exit) => {
          slot.running.delete(fiber)
          answer(response, exit)
        })
        // A client that goes away stops its wait, as the full path's request fiber is interrupted.
        response.once("close", () => {
          if (slot.running.has(fiber)) fiber.unsafeInterruptAsFork(FiberId.none)
        })
      })
      return true
    }

    slot.attach(handler)
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        slot.detach()
        for (const fiber of slot.running) fiber.unsafeInterruptAsFork(FiberId.none)
      })
    )
  })
)
