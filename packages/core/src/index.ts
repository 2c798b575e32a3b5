export * as Errors from "./Errors.js"
export * as Ids from "./Ids.js"
