export {}
export * as FakeAgent from "./FakeAgent.js"
export * as TestDatabase from "./TestDatabase.js"
export * as TestServer from "./TestServer.js"
export * as Fixtures from "./Fixtures.js"
export * as ServerProcess from "./ServerProcess.js"
export * as Cluster from "./Cluster.js"
