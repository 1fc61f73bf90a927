// matrix-js-sdk (the SDK behind Element Web) against a C3 tenant through the proxy.
//
//   node client_check.mjs <base URL> <user id> <password> <user id> <password>
//
// Two users sign in at <base URL> (http://127.0.0.1:PORT/t/<slug> or
// http://<slug>.c3.localhost:PORT) and use the homeserver the way Element does: sync, a room,
// messages, media up and down (the SDK builds the download URL from the origin alone), typing,
// read receipts, end-to-end encrypted messages (Rust crypto, in-memory store) and simplified
// sliding sync (MSC4186) with a long-poll woken by a new message. What they saw goes to stdout as
// one JSON object (the SDK's own logging goes to stderr); a failed step exits non-zero.
import { createHash } from "node:crypto";
import dns from "node:dns";
import http from "node:http";

// matrix-js-sdk asks for Node 22; on Node 20 it lacks only Promise.withResolvers.
if (!Promise.withResolvers) {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}
for (const level of ["log", "info", "debug", "warn", "trace"]) {
  console[level] = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");
}

const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
logger.setLevel("warn");

const STEP_TIMEOUT_MS = 60_000;
const [baseUrl, ...credentials] = process.argv.slice(2);
if (!baseUrl || credentials.length !== 4) {
  process.stderr.write("usage: node client_check.mjs <base URL> <user> <password> <user> <password>\n");
  process.exit(2);
}

// Browsers resolve every *.localhost name to loopback; Node 20 (getaddrinfo) does not. The
// same rule here, so http://acme.c3.localhost:8080 works as it does in Element Web, and the
// request carries Host: acme.c3.localhost:8080 like a browser's.
function lookup(hostname, options, callback) {
  if (hostname === "localhost" || hostname.endsWith(".localhost")) {
    if (options.all) callback(null, [{ address: "127.0.0.1", family: 4 }]);
    else callback(null, "127.0.0.1", 4);
    return;
  }
  dns.lookup(hostname, options, callback);
}

async function bodyBytes(body) {
  if (body === undefined || body === null) return null;
  if (typeof body === "string") return Buffer.from(body);
  if (body instanceof ArrayBuffer) return Buffer.from(body);
  if (ArrayBuffer.isView(body)) return Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  if (body instanceof Blob) return Buffer.from(await body.arrayBuffer());
  throw new Error(`unsupported request body ${Object.prototype.toString.call(body)}`);
}

// A fetch over node:http with the lookup above (Node's fetch cannot be given a resolver).
async function localFetch(input, init = {}) {
  const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url);
  const payload = await bodyBytes(init.body);
  const headers = {};
  new Headers(init.headers ?? {}).forEach((value, name) => {
    headers[name] = value;
  });
  if (payload !== null) headers["content-length"] = String(payload.length);
  return new Promise((resolve, reject) => {
    const signal = init.signal;
    if (signal?.aborted) {
      reject(signal.reason ?? new DOMException("Aborted", "AbortError"));
      return;
    }
    const request = http.request(url, { method: init.method ?? "GET", headers, lookup }, (res) => {
      const chunks = [];
      res.on("data", (chunk) => chunks.push(chunk));
      res.on("error", reject);
      res.on("end", () => {
        const answerHeaders = new Headers();
        for (const [name, value] of Object.entries(res.headers)) {
          for (const one of Array.isArray(value) ? value : [value]) answerHeaders.append(name, one);
        }
        const empty = [101, 204, 205, 304].includes(res.statusCode);
        resolve(
          new Response(empty ? null : Buffer.concat(chunks), {
            status: res.statusCode,
            statusText: res.statusMessage,
            headers: answerHeaders,
          }),
        );
      });
    });
    request.on("error", reject);
    signal?.addEventListener("abort", () => {
      request.destroy();
      reject(signal.reason ?? new DOMException("Aborted", "AbortError"));
    });
    request.end(payload ?? undefined);
  });
}

function within(what, promise, ms = STEP_TIMEOUT_MS) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

// Resolves with the first value `check` returns that is not undefined: now, or on an event.
function until(what, emitter, event, check) {
  return within(
    what,
    new Promise((resolve, reject) => {
      const test = (...args) => {
        try {
          const value = check(...args);
          if (value !== undefined) {
            emitter.off(event, test);
            resolve(value);
          }
        } catch (error) {
          emitter.off(event, test);
          reject(error);
        }
      };
      emitter.on(event, test);
      test();
    }),
  );
}

async function signIn(userId, password) {
  const anonymous = sdk.createClient({ baseUrl, fetchFn: localFetch });
  const answer = await anonymous.loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user: userId },
    password,
    initial_device_display_name: "c3 js-sdk check",
  });
  const client = sdk.createClient({
    baseUrl,
    fetchFn: localFetch,
    userId: answer.user_id,
    accessToken: answer.access_token,
    deviceId: answer.device_id,
  });
  await client.initRustCrypto({ useIndexedDB: false });
  const prepared = until("the first sync", client, sdk.ClientEvent.Sync, (state) =>
    state === "PREPARED" || state === "SYNCING" ? true : undefined,
  );
  await client.startClient({ initialSyncLimit: 10 });
  await prepared;
  return { client, answer };
}

const joined = (client, roomId, userId) =>
  until(`${userId} joined in ${client.getUserId()}'s view`, client, sdk.RoomStateEvent.Members, () =>
    client.getRoom(roomId)?.getMember(userId)?.membership === "join" ? true : undefined,
  );

async function joinRoom(client, roomId) {
  await until(`the invite to ${roomId}`, client, sdk.ClientEvent.Room, () =>
    client.getRoom(roomId) ? true : undefined,
  );
  await client.joinRoom(roomId);
}

// The first timeline event `match` accepts in `roomId`, as `client` sees it (decrypted).
function timelineEvent(client, roomId, what, match) {
  const seen = () => {
    const events = client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? [];
    return events.find((event) => !event.isDecryptionFailure() && match(event));
  };
  return within(
    what,
    new Promise((resolve) => {
      const check = () => {
        const event = seen();
        if (event) {
          client.off(sdk.RoomEvent.Timeline, check);
          client.off(sdk.MatrixEventEvent.Decrypted, check);
          resolve(event);
        }
      };
      client.on(sdk.RoomEvent.Timeline, check);
      client.on(sdk.MatrixEventEvent.Decrypted, check);
      check();
    }),
  );
}

const result = { base_url: baseUrl };
const [aliceId, alicePassword, bobId, bobPassword] = credentials;
const alice = await within("alice to sign in", signIn(aliceId, alicePassword));
const bob = await within("bob to sign in", signIn(bobId, bobPassword));
try {
  const wellKnown = await localFetch(`${baseUrl}/.well-known/matrix/client`);
  result.well_known = await wellKnown.json();
  result.login_well_known = alice.answer.well_known ?? null;
  result.user_ids = [alice.client.getUserId(), bob.client.getUserId()];

  // A room, messages, typing, read receipts.
  const { room_id: roomId } = await alice.client.createRoom({ name: "deals", invite: [bobId] });
  await joinRoom(bob.client, roomId);
  await joined(alice.client, roomId, bobId);
  const texts = ["hello from js-sdk", "second message"];
  for (const body of texts) await alice.client.sendTextMessage(roomId, body);
  const last = await timelineEvent(bob.client, roomId, "bob to see alice's messages", (event) =>
    event.getContent().body === texts[1] ? event : undefined,
  );
  result.messages = (bob.client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? [])
    .filter((event) => event.getType() === "m.room.message")
    .map((event) => event.getContent().body);

  const typing = until("bob to see alice typing", bob.client, sdk.RoomMemberEvent.Typing, () =>
    bob.client.getRoom(roomId)?.getMember(aliceId)?.typing ? true : undefined,
  );
  await alice.client.sendTyping(roomId, true, 30_000);
  result.typing = await typing;

  const receipt = until("alice to see bob's read receipt", alice.client, sdk.RoomEvent.Receipt, () =>
    alice.client.getRoom(roomId)?.getEventReadUpTo(bobId) === last.getId() ? true : undefined,
  );
  await bob.client.sendReadReceipt(last);
  result.receipt = await receipt;

  // Media up, and down the way Element does it: a URL the SDK builds from the origin.
  const payload = Buffer.alloc(300_000);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) % 251;
  const upload = await alice.client.uploadContent(payload, { name: "q3.bin", type: "application/octet-stream" });
  const mediaUrl = bob.client.mxcUrlToHttp(upload.content_uri, undefined, undefined, undefined, false, true, true);
  const download = await localFetch(mediaUrl, {
    headers: { Authorization: `Bearer ${bob.client.getAccessToken()}` },
  });
  const downloaded = Buffer.from(await download.arrayBuffer());
  const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");
  result.media = {
    content_uri: upload.content_uri,
    url: mediaUrl,
    status: download.status,
    uploaded_sha256: sha256(payload),
    downloaded_sha256: sha256(downloaded),
    size: downloaded.length,
  };

  // End-to-end encryption between the two users (Rust crypto).
  const { room_id: secretRoom } = await alice.client.createRoom({
    name: "secret",
    invite: [bobId],
    initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
  });
  await joinRoom(bob.client, secretRoom);
  await joined(alice.client, secretRoom, bobId);
  const secret = "the numbers are in";
  await alice.client.sendTextMessage(secretRoom, secret);
  const decrypted = await timelineEvent(bob.client, secretRoom, "bob to decrypt alice's message", (event) =>
    event.getType() === "m.room.message" ? event : undefined,
  );
  result.encrypted = {
    room_encrypted: bob.client.isRoomEncrypted?.(secretRoom) ?? null,
    wire_type: decrypted.getWireType(),
    body: decrypted.getContent().body,
    sender: decrypted.getSender(),
  };

  // Simplified sliding sync (MSC4186): an initial request, then a long-poll that a new message wakes.
  const request = () => ({
    lists: { all: { ranges: [[0, 20]], timeline_limit: 1, required_state: [] } },
  });
  const initial = await bob.client.slidingSync(request());
  let pos = initial.pos;
  const wake = "wake up, sliding sync";
  const started = Date.now();
  const woken = within("the sliding sync long-poll to return the new message", (async () => {
    for (;;) {
      const answer = await bob.client.slidingSync({ ...request(), pos, timeout: 30_000, clientTimeout: 40_000 });
      pos = answer.pos;
      const timeline = answer.rooms?.[roomId]?.timeline ?? [];
      const found = timeline.find((event) => event.content?.body === wake);
      if (found) return found;
    }
  })());
  await alice.client.sendTextMessage(roomId, wake);
  const event = await woken;
  result.sliding_sync = {
    initial_rooms: Object.keys(initial.rooms ?? {}).sort(),
    list_count: initial.lists?.all?.count ?? null,
    woken_by: event.content.body,
    waited_ms: Date.now() - started,
  };
} finally {
  alice.client.stopClient();
  bob.client.stopClient();
}
process.stdout.write(JSON.stringify(result) + "\n");
process.exit(0);
