import { Either } from "effect"
import { describe, expect, it } from "vitest"
import * as CallbackUrl from "../../src/delivery/CallbackUrl.js"

const strict = { allowPrivate: false, development: false }
const permissive = { allowPrivate: true, development: false }
const development = { allowPrivate: false, development: true }

const verdict = (url: string, options: CallbackUrl.ValidateOptions) => {
  const result = CallbackUrl.validate(url, options)
  return Either.isRight(result) ? "ok" : "refused"
}

describe("CallbackUrl.validate", () => {
  it.each([
    ["https://agent.example.com/callback", "ok"],
    ["https://agent.example.com:8443/cb?x=1", "ok"],
    ["https://93.184.216.34/callback", "ok"],
    ["https://[2606:4700:4700::1111]/callback", "ok"],
    ["http://agent.example.com/callback", "refused"],
    ["ftp://agent.example.com/callback", "refused"],
    ["/relative/path", "refused"],
    ["agent.example.com/callback", "refused"],
    ["", "refused"],
    ["https://user:pass@agent.example.com/", "refused"],
    ["https://user@agent.example.com/", "refused"],
    ["https://agent.example.com/cb#frag", "refused"],
    ["https://agent.example.com/cb#", "refused"],
    ["https://agent.example.com:0/cb", "refused"],
    ["https://agent.example.com:65535/cb", "ok"],
    ["https://10.0.0.5/cb", "refused"],
    ["https://192.168.1.10/cb", "refused"],
    ["https://172.16.0.1/cb", "refused"],
    ["https://172.31.255.255/cb", "refused"],
    ["https://169.254.169.254/latest/meta-data", "refused"],
    ["https://127.0.0.1/cb", "refused"],
    ["https://127.1/cb", "refused"],
    ["https://0x7f000001/cb", "refused"],
    ["https://2130706433/cb", "refused"],
    ["https://0.0.0.0/cb", "refused"],
    ["https://100.64.0.1/cb", "refused"],
    ["https://224.0.0.1/cb", "refused"],
    ["https://255.255.255.255/cb", "refused"],
    ["https://192.0.2.1/cb", "refused"],
    ["https://240.0.0.1/cb", "refused"],
    ["https://[::1]/cb", "refused"],
    ["https://[::]/cb", "refused"],
    ["https://[fd00::1]/cb", "refused"],
    ["https://[fe80::1]/cb", "refused"],
    ["https://[ff02::1]/cb", "refused"],
    ["https://[::ffff:127.0.0.1]/cb", "refused"],
    ["https://[::ffff:10.0.0.1]/cb", "refused"],
    ["https://[::ffff:169.254.169.254]/cb", "refused"],
    ["https://[::127.0.0.1]/cb", "refused"],
    ["https://[64:ff9b::a00:1]/cb", "refused"],
    ["https://[2001:db8::1]/cb", "refused"],
    ["https://localhost/cb", "refused"],
    ["https://LOCALHOST./cb", "refused"],
    ["https://agent.localhost/cb", "refused"],
    ["https://metadata.google.internal/computeMetadata/v1/", "refused"],
    ["https://metadata/cb", "refused"],
    ["https://printer.local/cb", "refused"],
    ["https://intranet/cb", "refused"]
  ])("%s → %s (strict)", (url, expected) => {
    expect(verdict(url, strict)).toBe(expected)
  })

  it.each([
    "http://127.0.0.1:3000/cb",
    "http://localhost:3000/cb",
    "https://10.0.0.5/cb",
    "http://192.168.1.10/cb",
    "https://172.16.0.1/cb",
    "http://169.254.1.1/cb",
    "http://[::1]:8080/cb",
    "https://[fd00::1]/cb",
    "https://[::ffff:127.0.0.1]/cb",
    "https://100.64.0.1/cb",
    "http://agent-svc:8080/cb",
    "https://agent.example.com/cb"
  ])("%s is allowed with allowPrivate", (url) => {
    expect(verdict(url, permissive)).toBe("ok")
  })

  it.each([
    ["https://user:pass@127.0.0.1/", "refused"],
    ["http://127.0.0.1/cb#x", "refused"],
    ["gopher://127.0.0.1/", "refused"],
    ["http://127.0.0.1:0/cb", "refused"],
    // Plain http stays for private hosts: a public one still needs https.
    ["http://agent.example.com/cb", "refused"],
    ["http://93.184.216.34/cb", "refused"],
    ["http://[2606:4700:4700::1111]/cb", "refused"],
    // Cloud metadata services hand out the host's credentials: never a callback.
    ["http://169.254.169.254/latest/meta-data", "refused"],
    ["http://[::ffff:169.254.169.254]/cb", "refused"],
    ["http://169.254.170.2/v2/credentials", "refused"],
    ["http://100.100.100.200/latest", "refused"],
    ["http://[fd00:ec2::254]/cb", "refused"],
    ["http://metadata.google.internal/computeMetadata/v1/", "refused"],
    ["http://METADATA./cb", "refused"],
    ["http://instance-data/latest", "refused"]
  ])("%s → %s even with allowPrivate", (url, expected) => {
    expect(verdict(url, permissive)).toBe(expected)
  })

  it.each([
    ["http://127.0.0.1:3000/cb", "ok"],
    ["http://localhost:3000/cb", "ok"],
    ["http://agent.localhost:3000/cb", "ok"],
    ["http://[::1]:3000/cb", "ok"],
    ["https://127.0.0.1:3000/cb", "ok"],
    ["http://10.0.0.5/cb", "refused"],
    ["https://10.0.0.5/cb", "refused"],
    ["https://169.254.169.254/cb", "refused"],
    ["http://agent.example.com/cb", "refused"],
    ["https://agent.example.com/cb", "ok"]
  ])("%s → %s in development", (url, expected) => {
    expect(verdict(url, development)).toBe(expected)
  })

  it("answers INVALID_CALLBACK_URL with a sentence", () => {
    const result = CallbackUrl.validate("https://169.254.169.254/latest", strict)
    expect(Either.isLeft(result)).toBe(true)
    if (Either.isLeft(result)) {
      expect(result.left._tag).toBe("InvalidRequest")
      expect(result.left.code).toBe("INVALID_CALLBACK_URL")
      expect(result.left.error).toMatch(/metadata/)
      expect(result.left.error).toMatch(/\.$/)
    }
    const http = CallbackUrl.validate("http://agent.example.com/", strict)
    expect(Either.isLeft(http) && http.left.error).toMatch(/https/)
  })

  it.each([
    ["https://0.0.0.0/cb", "points to an unspecified address"],
    ["https://127.0.0.1/cb", "points to a loopback address"],
    ["https://[fd00::1]/cb", "points to a unique-local address"],
    ["https://10.0.0.1/cb", "points to a private (RFC 1918) address"]
  ])("names the kind of address refused in a sentence: %s", (url, phrase) => {
    const result = CallbackUrl.validate(url, strict)
    expect(Either.isLeft(result) && result.left.error).toContain(phrase)
  })

  it("returns the parsed URL", () => {
    const result = CallbackUrl.validate("https://Agent.Example.com/cb?q=1", strict)
    expect(Either.isRight(result) && result.right.href).toBe("https://agent.example.com/cb?q=1")
  })
})

describe("CallbackUrl address checks", () => {
  it.each([
    ["8.8.8.8", true],
    ["93.184.216.34", true],
    ["2606:4700:4700::1111", true],
    ["::ffff:8.8.8.8", true],
    ["10.1.2.3", false],
    ["172.16.5.4", false],
    ["192.168.0.1", false],
    ["127.0.0.1", false],
    ["169.254.169.254", false],
    ["100.64.0.1", false],
    ["100.127.255.255", false],
    ["0.0.0.0", false],
    ["255.255.255.255", false],
    ["224.0.0.251", false],
    ["198.18.0.1", false],
    ["::1", false],
    ["::", false],
    ["fd00::1", false],
    ["fe80::1", false],
    ["fe80::1%eth0", false],
    ["::ffff:127.0.0.1", false],
    ["::ffff:192.168.1.1", false],
    ["::ffff:7f00:1", false],
    ["::7f00:1", false],
    ["2002:7f00:1::", false],
    ["not an address", false],
    ["", false]
  ])("isPublicAddress(%s) = %s", (ip, expected) => {
    expect(CallbackUrl.isPublicAddress(ip)).toBe(expected)
  })

  it("isAllowedAddress allows anything with allowPrivate and loopback with allowLoopback", () => {
    expect(CallbackUrl.isAllowedAddress("10.0.0.1", false)).toBe(false)
    expect(CallbackUrl.isAllowedAddress("10.0.0.1", true)).toBe(true)
    expect(CallbackUrl.isAllowedAddress("8.8.8.8", false)).toBe(true)
    expect(CallbackUrl.isAllowedAddress("127.0.0.1", false, true)).toBe(true)
    expect(CallbackUrl.isAllowedAddress("::1", false, true)).toBe(true)
    expect(CallbackUrl.isAllowedAddress("::ffff:127.0.0.1", false, true)).toBe(true)
    expect(CallbackUrl.isAllowedAddress("10.0.0.1", false, true)).toBe(false)
  })
})
