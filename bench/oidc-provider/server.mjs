// node oidc-provider doing client_credentials with JWT access tokens (EdDSA, like Taskpass),
// over HTTPS with the certificate the bench made; its default adapter keeps everything in
// memory: nothing it issues is durable. Prints {"url": ...} once listening.
import { readFileSync } from "node:fs";
import { createServer } from "node:https";
import { generateKeyPair, exportJWK } from "jose";
import Provider from "oidc-provider";

const { privateKey } = await generateKeyPair("EdDSA", { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: "bench-1", alg: "EdDSA", use: "sig" };
const server = createServer({ key: readFileSync(process.env.KEY_FILE), cert: readFileSync(process.env.CERT_FILE) });
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const issuer = `https://127.0.0.1:${server.address().port}`;
const provider = new Provider(issuer, {
  jwks: { keys: [jwk] },
  clients: [
    {
      client_id: "bench",
      client_secret: "bench-secret-bench-secret-bench-secret",
      grant_types: ["client_credentials"],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: "client_secret_post",
      id_token_signed_response_alg: "EdDSA",
    },
  ],
  scopes: ["read"],
  features: {
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => "https://api.example",
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({ scope: "read", accessTokenFormat: "jwt", accessTokenTTL: 300, jwt: { sign: { alg: "EdDSA" } } }),
    },
    devInteractions: { enabled: false },
  },
});
server.on("request", provider.callback());
console.log(JSON.stringify({ url: issuer, token_endpoint: `${issuer}/token` }));
