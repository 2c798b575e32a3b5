export {}
export * as FakeAgent from "./FakeAgent.js"
