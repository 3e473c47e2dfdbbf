// Drives the real matrix-js-sdk (with its Rust crypto) for Hearth's black-box
// tests. One process holds any number of clients, each under a name chosen by
// the caller.
//
// PROTOCOL
//
// stdin:  one JSON request per line:  {"id": N, "cmd": "<command>", "args": {...}}
// stdout: one JSON response per line: {"id": N, "ok": true, "result": ...}
//                                  or {"id": N, "ok": false, "error": "message"}
// Nothing else is ever written to stdout; every log line (the sdk's included)
// goes to stderr. DRIVER_LOG_LEVEL=error|warn|info|debug|trace sets how much
// (default info). Requests may overlap; answers carry the request's id.
//
// Every command accepts `timeoutMs` (default 30000). Commands that wait give
// up after it with an error describing what they saw; no command runs longer
// than timeoutMs plus a few seconds.
//
// COMMANDS (args; result)
//
//   ping {}                              -> {node, sdk, crypto, clients}
//   register {name, baseUrl, user, password, deviceId?, crypto?}
//        registers through user-interactive auth (the first POST /register
//        answers 401 with a session, the retry uses m.login.dummy), then
//        continues as `login` does                 -> {userId, deviceId, crypto}
//   login {name, baseUrl, user, password, deviceId?, crypto?}
//        m.login.password with an m.id.user identifier (a deviceId names the
//        new device; the crypto store is in memory, so never reuse one that
//        already has keys); creates the client,
//        runs initRustCrypto({useIndexedDB: false}) unless crypto is false,
//        starts it and waits for the first sync and, with crypto, until the
//        server lists the device's keys          -> {userId, deviceId, crypto}
//   createRoom {name, encrypted?, invite?, preset?, historyVisibility?, roomName?}
//        encrypted rooms get m.room.encryption (m.megolm.v1.aes-sha2) as
//        initial state; preset defaults to private_chat; waits until sync
//        shows the room joined (and, when encrypted, until the crypto layer
//        knows it)                              -> {roomId, encrypted}
//   join {name, roomId}                  -> {roomId, encrypted}
//        waits until sync shows the room joined (and known as encrypted to
//        the crypto layer if it has m.room.encryption)
//   invite {name, roomId, userId}        -> {roomId, userId}
//        with crypto, in an encrypted room whose history is shared, the sdk
//        first uploads the room's keys for the invitee (MSC4268) through
//        /_matrix/media/v3/upload
//   leave {name, roomId}                 -> {roomId}; waits until sync shows it
//   waitForInvite {name, roomId?}        -> {roomId, inviter}
//   waitForMembership {name, roomId, userId, membership}
//                                        -> {roomId, userId, membership}
//   sendText {name, roomId, body}        -> {eventId, encrypted}
//   waitForMessage {name, roomId, body, sender?}
//        waits for an m.room.message with content.body === body that has
//        come back from the server (decrypted first, in encrypted rooms)
//        -> {eventId, sender, encrypted, body, shield}
//        shield is null for cleartext events, else the sdk's verdict on the
//        sender's device, e.g. {colour: "RED", reason: "UNSIGNED_DEVICE"} or
//        {colour: "NONE", reason: null}. The timeout error lists the events
//        seen, with the reason of each decryption failure.
//   deviceIds {name, userId, includes?, excludes?}
//        the devices the client's crypto knows for the user (downloading
//        them if the user is not tracked yet); with includes/excludes (arrays
//        of device IDs) waits until the list has all of the first and none
//        of the second                         -> {userId, deviceIds: [sorted]}
//   ownDeviceKeys {name}                 -> {deviceId, ed25519, curve25519}
//   bootstrapCrossSigning {name, password?, reset?}
//        creates (reset: replaces) and uploads cross-signing keys; answers a
//        401 from /keys/device_signing/upload with m.login.password
//        (password defaults to the login password)
//        -> {ready, uia, masterKey, selfSigningKey, userSigningKey, status}
//        uia: whether the server asked for user-interactive auth; the keys
//        are the public keys (unpadded base64), null unless ready; status is
//        getCrossSigningStatus(). A /keys/query for our own user still in
//        flight from an earlier upload can make the crypto layer drop new
//        private keys after a reset (ready: false), so leave a pause first.
//   createKeyBackup {name}               -> {version, serverVersion, algorithm}
//        resetKeyBackup(), then waits until the client backs up to it
//   keyBackupInfo {name}                 -> {activeVersion, serverVersion, algorithm}
//   stop {name}                          -> {stopped: name}
//   exit {}                              -> {exiting: true}; stops every client, exits 0
//
// End of input on stdin behaves like `exit`.

import { Console } from "node:console";
import { createInterface } from "node:readline";
import { readFileSync } from "node:fs";

// matrix-js-sdk 43 expects Node 22 and uses Promise.withResolvers, which Node
// 20 lacks; without it the sync loop dies silently. Install it before the sdk
// is loaded (hence the dynamic imports below).
if (typeof Promise.withResolvers !== "function") {
    Object.defineProperty(Promise, "withResolvers", {
        configurable: true,
        writable: true,
        value: function withResolvers() {
            let resolve;
            let reject;
            const promise = new this((res, rej) => {
                resolve = res;
                reject = rej;
            });
            return { promise, resolve, reject };
        },
    });
}

// stdout carries the protocol only: point every console method at stderr.
const LEVELS = { error: 0, warn: 1, info: 2, debug: 3, trace: 4 };
const logLevel = LEVELS[(process.env.DRIVER_LOG_LEVEL ?? "info").toLowerCase()] ?? LEVELS.info;
const errConsole = new Console({ stdout: process.stderr, stderr: process.stderr });
const noop = () => {};
for (const method of ["dir", "dirxml", "table", "group", "groupCollapsed", "groupEnd", "count", "countReset", "time", "timeEnd", "timeLog", "assert"]) {
    if (typeof errConsole[method] === "function") console[method] = errConsole[method].bind(errConsole);
}
for (const [method, level] of [["error", 0], ["warn", 1], ["info", 2], ["log", 2], ["debug", 3], ["trace", 4]]) {
    // console.trace would print a stack for every sdk trace line; log it as debug.
    const target = method === "trace" ? "debug" : method;
    console[method] = level <= logLevel ? errConsole[target].bind(errConsole) : noop;
}
const log = (...args) => errConsole.error(`[driver ${new Date().toISOString()}]`, ...args);

process.on("unhandledRejection", (reason) => log("unhandled rejection:", describeError(reason)));
process.on("uncaughtException", (err) => log("uncaught exception:", describeError(err)));

const sdk = await import("matrix-js-sdk");
const { logger: sdkLogger } = await import("matrix-js-sdk/lib/logger.js");
const { CrossSigningKey, EventShieldColour, EventShieldReason } = await import("matrix-js-sdk/lib/crypto-api/index.js");
const SDK_VERSION = JSON.parse(readFileSync(new URL("./node_modules/matrix-js-sdk/package.json", import.meta.url))).version;

const DEFAULT_TIMEOUT_MS = 30_000;
const POLL_MS = 50;

/** name -> { name, client, userId, deviceId, password, baseUrl, seen: Map<roomId, MatrixEvent[]>, syncError } */
const clients = new Map();

// ---------------------------------------------------------------------------
// helpers

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A readable description of anything thrown, with HTTP details for MatrixErrors. */
function describeError(e) {
    if (e === null || e === undefined) return String(e);
    if (typeof e !== "object") return String(e);
    const parts = [];
    if (e.httpStatus !== undefined) parts.push(`HTTP ${e.httpStatus}`);
    if (e.errcode) parts.push(e.errcode);
    const message = e.data?.error ?? e.message ?? JSON.stringify(e);
    parts.push(message);
    let text = `${e.name && e.name !== "Error" && e.name !== e.errcode ? e.name + ": " : ""}${parts.join(" ")}`;
    if (e.url) text += ` (${e.url})`;
    const causes = causeChain(e);
    if (causes) text += `; caused by ${causes}`;
    return text;
}

/** The `code message` of each cause behind an error, e.g. why a TLS handshake failed. */
function causeChain(e) {
    const parts = [];
    let cause = e?.cause;
    for (let depth = 0; cause && depth < 4; depth++) {
        parts.push(`${cause.code ? cause.code + " " : ""}${cause.message ?? String(cause)}`);
        cause = cause.cause;
    }
    return parts.join("; ");
}

/**
 * The global fetch, but a failure's message names its cause: the sdk wraps
 * network failures in a ConnectionError that keeps only the outer message
 * ("fetch failed"), which hides e.g. an untrusted certificate.
 */
async function fetchWithCause(resource, options) {
    try {
        return await globalThis.fetch(resource, options);
    } catch (e) {
        const detail = e?.name === "AbortError" ? "" : causeChain(e);
        if (!detail) throw e;
        const wrapped = new TypeError(`${e.message} (${detail})`);
        wrapped.cause = e;
        throw wrapped;
    }
}

function need(args, key, type) {
    const value = args[key];
    const ok = type === "array" ? Array.isArray(value) : typeof value === type;
    if (!ok) throw new Error(`argument "${key}" must be a${type === "array" ? "n" : ""} ${type}, got ${JSON.stringify(value)}`);
    return value;
}

function optional(args, key, type, fallback) {
    return args[key] === undefined || args[key] === null ? fallback : need(args, key, type);
}

function entryFor(args) {
    const name = need(args, "name", "string");
    const entry = clients.get(name);
    if (!entry) throw new Error(`no client named "${name}" (known: ${[...clients.keys()].join(", ") || "none"})`);
    return entry;
}

function cryptoOf(entry) {
    const crypto = entry.client.getCrypto();
    if (!crypto) throw new Error(`client "${entry.name}" was started without crypto`);
    return crypto;
}

/**
 * Calls `check` until it returns something other than undefined/null/false,
 * and returns that. After timeoutMs throws an error naming `what` and, if
 * given, the text of `describe()` (the state seen last).
 */
async function waitFor(check, timeoutMs, what, describe) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const value = await check();
        if (value !== undefined && value !== null && value !== false) return value;
        if (Date.now() >= deadline) {
            let detail = "";
            if (describe) {
                try {
                    detail = `; ${await describe()}`;
                } catch (e) {
                    detail = `; (describing the state failed: ${describeError(e)})`;
                }
            }
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
        }
        await sleep(POLL_MS);
    }
}

function syncDescription(entry) {
    return `sync state ${entry.client.getSyncState()}${entry.syncError ? `, last sync error: ${entry.syncError}` : ""}`;
}

/** Every event this client has seen in the room: those recorded from sync and the live timeline. */
function roomEvents(entry, roomId) {
    const events = new Set(entry.seen.get(roomId) ?? []);
    const room = entry.client.getRoom(roomId);
    if (room) for (const ev of room.getLiveTimeline().getEvents()) events.add(ev);
    return [...events];
}

function eventSummary(ev) {
    const parts = [ev.getId() ?? "(no id)", `from ${ev.getSender()}`, `type ${ev.getType()}`];
    if (ev.isEncrypted()) parts.push("encrypted");
    if (ev.isBeingDecrypted()) parts.push("still decrypting");
    if (ev.isDecryptionFailure()) parts.push(`UNABLE TO DECRYPT: ${ev.decryptionFailureReason ?? "unknown reason"}`);
    if (ev.status) parts.push(`local status ${ev.status}`);
    const body = ev.getContent()?.body;
    if (body !== undefined) parts.push(`body ${JSON.stringify(body)}`);
    return parts.join(", ");
}

function membershipOf(entry, roomId, userId) {
    return entry.client.getRoom(roomId)?.getMember(userId)?.membership ?? null;
}

async function encryptionEnabled(entry, roomId) {
    const crypto = entry.client.getCrypto();
    if (crypto) return await crypto.isEncryptionEnabledInRoom(roomId);
    return entry.client.getRoom(roomId)?.hasEncryptionStateEvent() ?? false;
}

/** Waits until sync shows us joined to the room and, if it is encrypted, until crypto knows it. */
async function waitUntilJoined(entry, roomId, timeoutMs, expectEncrypted) {
    await waitFor(
        () => entry.client.getRoom(roomId)?.getMyMembership() === "join",
        timeoutMs,
        `sync to show ${entry.userId} joined to ${roomId}`,
        () => `membership ${entry.client.getRoom(roomId)?.getMyMembership() ?? "(room unknown)"}, ${syncDescription(entry)}`,
    );
    const room = entry.client.getRoom(roomId);
    if ((expectEncrypted || room.hasEncryptionStateEvent()) && entry.client.getCrypto()) {
        await waitFor(
            () => entry.client.getCrypto().isEncryptionEnabledInRoom(roomId),
            timeoutMs,
            `the crypto layer of "${entry.name}" to treat ${roomId} as encrypted`,
            () => `room has m.room.encryption state: ${room.hasEncryptionStateEvent()}`,
        );
    }
    return await encryptionEnabled(entry, roomId);
}

// ---------------------------------------------------------------------------
// sessions

/** Creates the client for fresh credentials, sets up crypto, starts it, waits for the first sync. */
async function startSession(args, creds, password, timeoutMs) {
    const name = args.name;
    const baseUrl = args.baseUrl;
    const useCrypto = optional(args, "crypto", "boolean", true);
    const client = sdk.createClient({
        baseUrl,
        userId: creds.user_id,
        deviceId: creds.device_id,
        accessToken: creds.access_token,
        fetchFn: fetchWithCause,
        logger: sdkLogger.getChild(`[${name}]`),
    });
    const entry = {
        name,
        client,
        userId: creds.user_id,
        deviceId: creds.device_id,
        password,
        baseUrl,
        seen: new Map(),
        syncError: null,
    };
    client.on(sdk.RoomEvent.Timeline, (ev, room) => {
        const roomId = room?.roomId ?? ev.getRoomId();
        if (!roomId) return;
        if (!entry.seen.has(roomId)) entry.seen.set(roomId, []);
        entry.seen.get(roomId).push(ev);
    });
    client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
        if (data?.error) entry.syncError = describeError(data.error);
        if (state === sdk.SyncState.Error || state === sdk.SyncState.Reconnecting) {
            log(`client "${name}": sync state ${state}${entry.syncError ? ` (${entry.syncError})` : ""}`);
        }
    });
    clients.set(name, entry);
    try {
        if (useCrypto) await client.initRustCrypto({ useIndexedDB: false });
        await client.startClient({ initialSyncLimit: 50 });
        await waitFor(
            () => [sdk.SyncState.Prepared, sdk.SyncState.Syncing].includes(client.getSyncState()),
            timeoutMs,
            `the first sync of "${name}"`,
            () => syncDescription(entry),
        );
        if (client.getCrypto()) await waitForOwnDeviceKeys(entry, timeoutMs);
    } catch (e) {
        clients.delete(name);
        try {
            client.stopClient();
        } catch {
            // already broken; the original error matters
        }
        throw e;
    }
    return { userId: entry.userId, deviceId: entry.deviceId, crypto: Boolean(client.getCrypto()) };
}

/** Names of clients being logged in or registered right now. */
const starting = new Set();

/**
 * Waits until the server lists this device's identity keys: the crypto layer
 * uploads them in the background, and until they are there nobody can
 * encrypt for the device (a room key sent meanwhile never reaches it).
 */
async function waitForOwnDeviceKeys(entry, timeoutMs) {
    const { userId, deviceId } = entry;
    let last = "no answer yet";
    await waitFor(
        async () => {
            try {
                const resp = await entry.client.http.authedRequest(sdk.Method.Post, "/keys/query", undefined, {
                    device_keys: { [userId]: [deviceId] },
                });
                const keys = resp?.device_keys?.[userId]?.[deviceId];
                last = keys ? "listed" : `not listed: ${JSON.stringify(resp).slice(0, 300)}`;
                return Boolean(keys);
            } catch (e) {
                last = describeError(e);
                return false;
            }
        },
        timeoutMs,
        `the server to list the device keys of ${userId} ${deviceId}`,
        () => `last /keys/query: ${last}`,
    );
}

function checkNewSession(args) {
    const name = need(args, "name", "string");
    if (clients.has(name) || starting.has(name)) {
        throw new Error(`a client named "${name}" already exists; stop it first`);
    }
    need(args, "baseUrl", "string");
    need(args, "user", "string");
    need(args, "password", "string");
    optional(args, "deviceId", "string", undefined);
}

/** Runs a login or registration with the client's name reserved, so that two cannot race for it. */
function reservingName(fn) {
    return async (args, timeoutMs) => {
        checkNewSession(args);
        starting.add(args.name);
        try {
            return await fn(args, timeoutMs);
        } finally {
            starting.delete(args.name);
        }
    };
}

function bareClient(args) {
    return sdk.createClient({
        baseUrl: args.baseUrl,
        fetchFn: fetchWithCause,
        logger: sdkLogger.getChild(`[${args.name}]`),
    });
}

async function login(args, timeoutMs) {
    let creds;
    try {
        creds = await bareClient(args).loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: args.user },
            password: args.password,
            ...(args.deviceId ? { device_id: args.deviceId } : {}),
            initial_device_display_name: `js-sdk ${args.name}`,
        });
    } catch (e) {
        throw new Error(`login of ${args.user} failed: ${describeError(e)}`);
    }
    return await startSession(args, creds, args.password, timeoutMs);
}

async function register(args, timeoutMs) {
    const http = bareClient(args);
    const body = {
        username: args.user,
        password: args.password,
        ...(args.deviceId ? { device_id: args.deviceId } : {}),
        initial_device_display_name: `js-sdk ${args.name}`,
    };
    let creds;
    try {
        creds = await http.registerRequest(body);
    } catch (e) {
        if (e?.httpStatus !== 401 || typeof e.data?.session !== "string") {
            throw new Error(`registering ${args.user}: the first /register call failed: ${describeError(e)}`);
        }
        const flows = e.data.flows ?? [];
        if (!flows.some((f) => (f.stages ?? []).length === 1 && f.stages[0] === "m.login.dummy")) {
            throw new Error(`registering ${args.user}: no m.login.dummy flow offered: ${JSON.stringify(flows)}`);
        }
        try {
            creds = await http.registerRequest({ ...body, auth: { type: "m.login.dummy", session: e.data.session } });
        } catch (e2) {
            throw new Error(`registering ${args.user}: the m.login.dummy stage failed: ${describeError(e2)}`);
        }
    }
    if (!creds?.access_token) throw new Error(`registering ${args.user}: no access token in ${JSON.stringify(creds)}`);
    return await startSession(args, creds, args.password, timeoutMs);
}

function stopEntry(entry) {
    clients.delete(entry.name);
    entry.client.stopClient();
    entry.client.removeAllListeners();
}

// ---------------------------------------------------------------------------
// commands

const commands = {
    async ping() {
        return {
            node: process.version,
            sdk: SDK_VERSION,
            crypto: await import("@matrix-org/matrix-sdk-crypto-wasm").then(() => true, () => false),
            clients: [...clients.keys()],
        };
    },

    login: reservingName(login),
    register: reservingName(register),

    async createRoom(args, timeoutMs) {
        const entry = entryFor(args);
        const encrypted = optional(args, "encrypted", "boolean", false);
        const invite = optional(args, "invite", "array", []);
        const opts = {
            preset: optional(args, "preset", "string", "private_chat"),
            invite,
            initial_state: encrypted
                ? [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }]
                : [],
        };
        const historyVisibility = optional(args, "historyVisibility", "string", undefined);
        if (historyVisibility !== undefined) {
            opts.initial_state.push({
                type: "m.room.history_visibility",
                state_key: "",
                content: { history_visibility: historyVisibility },
            });
        }
        const roomName = optional(args, "roomName", "string", undefined);
        if (roomName !== undefined) opts.name = roomName;
        const { room_id: roomId } = await entry.client.createRoom(opts);
        const isEncrypted = await waitUntilJoined(entry, roomId, timeoutMs, encrypted);
        return { roomId, encrypted: isEncrypted };
    },

    async join(args, timeoutMs) {
        const entry = entryFor(args);
        const roomId = need(args, "roomId", "string");
        await entry.client.joinRoom(roomId);
        const encrypted = await waitUntilJoined(entry, roomId, timeoutMs, false);
        return { roomId, encrypted };
    },

    async invite(args) {
        const entry = entryFor(args);
        const roomId = need(args, "roomId", "string");
        const userId = need(args, "userId", "string");
        await entry.client.invite(roomId, userId);
        return { roomId, userId };
    },

    async leave(args, timeoutMs) {
        const entry = entryFor(args);
        const roomId = need(args, "roomId", "string");
        await entry.client.leave(roomId);
        await waitFor(
            () => ["leave", undefined].includes(entry.client.getRoom(roomId)?.getMyMembership()),
            timeoutMs,
            `sync to show ${entry.userId} left ${roomId}`,
            () => `membership ${entry.client.getRoom(roomId)?.getMyMembership()}; ${syncDescription(entry)}`,
        );
        return { roomId };
    },

    async waitForInvite(args, timeoutMs) {
        const entry = entryFor(args);
        const roomId = optional(args, "roomId", "string", undefined);
        const room = await waitFor(
            () =>
                entry.client
                    .getRooms()
                    .find((r) => r.getMyMembership() === "invite" && (roomId === undefined || r.roomId === roomId)),
            timeoutMs,
            `an invite for ${entry.userId}${roomId ? ` to ${roomId}` : ""}`,
            () =>
                `rooms known: ${
                    entry.client
                        .getRooms()
                        .map((r) => `${r.roomId} (${r.getMyMembership()})`)
                        .join(", ") || "none"
                }; ${syncDescription(entry)}`,
        );
        const inviter = room.getMember(entry.userId)?.events.member?.getSender() ?? null;
        return { roomId: room.roomId, inviter };
    },

    async waitForMembership(args, timeoutMs) {
        const entry = entryFor(args);
        const roomId = need(args, "roomId", "string");
        const userId = need(args, "userId", "string");
        const membership = need(args, "membership", "string");
        await waitFor(
            () => membershipOf(entry, roomId, userId) === membership,
            timeoutMs,
            `"${entry.name}" to see ${userId} with membership ${membership} in ${roomId}`,
            () =>
                entry.client.getRoom(roomId)
                    ? `membership seen: ${membershipOf(entry, roomId, userId) ?? "none"}; ${syncDescription(entry)}`
                    : `room unknown to the client; ${syncDescription(entry)}`,
        );
        return { roomId, userId, membership };
    },

    async sendText(args) {
        const entry = entryFor(args);
        const roomId = need(args, "roomId", "string");
        const body = need(args, "body", "string");
        const { event_id: eventId } = await entry.client.sendTextMessage(roomId, body);
        const sent = entry.client.getRoom(roomId)?.findEventById(eventId);
        const encrypted = sent ? sent.isEncrypted() : await encryptionEnabled(entry, roomId);
        return { eventId, encrypted };
    },

    async waitForMessage(args, timeoutMs) {
        const entry = entryFor(args);
        const roomId = need(args, "roomId", "string");
        const body = need(args, "body", "string");
        const sender = optional(args, "sender", "string", undefined);
        const ev = await waitFor(
            () =>
                roomEvents(entry, roomId).find(
                    (e) =>
                        e.getId()?.startsWith("$") &&
                        !e.isDecryptionFailure() &&
                        !e.isBeingDecrypted() &&
                        e.getType() === "m.room.message" &&
                        e.getContent()?.body === body &&
                        (sender === undefined || e.getSender() === sender),
                ),
            timeoutMs,
            `"${entry.name}" to receive a message with body ${JSON.stringify(body)}${sender ? ` from ${sender}` : ""} in ${roomId}`,
            () => {
                const seen = roomEvents(entry, roomId);
                const room = entry.client.getRoom(roomId);
                const head = room ? `my membership ${room.getMyMembership()}` : "room unknown to the client";
                const shown = seen.slice(-40).map((e) => `  - ${eventSummary(e)}`);
                return `${head}; ${syncDescription(entry)}; ${seen.length} event(s) seen${
                    seen.length > shown.length ? ` (last ${shown.length})` : ""
                }:\n${shown.join("\n")}`;
            },
        );
        let shield = null;
        const crypto = entry.client.getCrypto();
        if (ev.isEncrypted() && crypto) {
            const info = await crypto.getEncryptionInfoForEvent(ev);
            if (info) {
                shield = {
                    colour: EventShieldColour[info.shieldColour] ?? info.shieldColour,
                    reason: info.shieldReason === null ? null : (EventShieldReason[info.shieldReason] ?? info.shieldReason),
                };
            }
        }
        return { eventId: ev.getId(), sender: ev.getSender(), encrypted: ev.isEncrypted(), body, shield };
    },

    async deviceIds(args, timeoutMs) {
        const entry = entryFor(args);
        const userId = need(args, "userId", "string");
        const includes = optional(args, "includes", "array", []);
        const excludes = optional(args, "excludes", "array", []);
        const crypto = cryptoOf(entry);
        let deviceIds = [];
        await waitFor(
            async () => {
                const devices = (await crypto.getUserDeviceInfo([userId], true)).get(userId);
                deviceIds = devices ? [...devices.keys()].sort() : [];
                return includes.every((d) => deviceIds.includes(d)) && !excludes.some((d) => deviceIds.includes(d));
            },
            timeoutMs,
            `"${entry.name}" to know devices of ${userId} including ${JSON.stringify(includes)} and excluding ${JSON.stringify(excludes)}`,
            () => `it knows ${JSON.stringify(deviceIds)}; ${syncDescription(entry)}`,
        );
        return { userId, deviceIds };
    },

    async ownDeviceKeys(args) {
        const entry = entryFor(args);
        const keys = await cryptoOf(entry).getOwnDeviceKeys();
        return { deviceId: entry.deviceId, ed25519: keys.ed25519, curve25519: keys.curve25519 };
    },

    async bootstrapCrossSigning(args) {
        const entry = entryFor(args);
        const crypto = cryptoOf(entry);
        const password = optional(args, "password", "string", entry.password);
        let uia = false;
        await crypto.bootstrapCrossSigning({
            setupNewCrossSigning: optional(args, "reset", "boolean", false),
            authUploadDeviceSigningKeys: async (makeRequest) => {
                try {
                    return await makeRequest(null);
                } catch (e) {
                    if (e?.httpStatus !== 401 || !Array.isArray(e.data?.flows)) throw e;
                    uia = true;
                    return await makeRequest({
                        type: "m.login.password",
                        identifier: { type: "m.id.user", user: entry.userId },
                        password,
                        ...(e.data.session ? { session: e.data.session } : {}),
                    });
                }
            },
        });
        return {
            ready: await crypto.isCrossSigningReady(),
            uia,
            masterKey: await crypto.getCrossSigningKeyId(CrossSigningKey.Master),
            selfSigningKey: await crypto.getCrossSigningKeyId(CrossSigningKey.SelfSigning),
            userSigningKey: await crypto.getCrossSigningKeyId(CrossSigningKey.UserSigning),
            status: await crypto.getCrossSigningStatus(),
        };
    },

    async createKeyBackup(args, timeoutMs) {
        const entry = entryFor(args);
        const crypto = cryptoOf(entry);
        await crypto.resetKeyBackup();
        const version = await waitFor(
            () => crypto.getActiveSessionBackupVersion(),
            timeoutMs,
            `"${entry.name}" to start using the new key backup`,
        );
        const info = await crypto.getKeyBackupInfo();
        return { version, serverVersion: info?.version ?? null, algorithm: info?.algorithm ?? null };
    },

    async keyBackupInfo(args) {
        const entry = entryFor(args);
        const crypto = cryptoOf(entry);
        const info = await crypto.getKeyBackupInfo();
        return {
            activeVersion: await crypto.getActiveSessionBackupVersion(),
            serverVersion: info?.version ?? null,
            algorithm: info?.algorithm ?? null,
        };
    },

    async stop(args) {
        const entry = entryFor(args);
        stopEntry(entry);
        return { stopped: entry.name };
    },
};

// ---------------------------------------------------------------------------
// main loop

function respond(message, then) {
    process.stdout.write(JSON.stringify(message) + "\n", then);
}

function stopAll() {
    for (const entry of [...clients.values()]) {
        try {
            stopEntry(entry);
        } catch (e) {
            log(`stopping "${entry.name}" failed: ${describeError(e)}`);
        }
    }
}

let exiting = false;
const inFlight = new Set();

/** Lets commands already running answer (for up to 5 s), stops every client and exits 0. */
async function exitNow(message) {
    if (exiting) return;
    exiting = true;
    await Promise.race([Promise.allSettled([...inFlight]), sleep(5000)]);
    stopAll();
    if (message) respond(message, () => process.exit(0));
    else process.exit(0);
}

async function handle(request) {
    const id = request?.id ?? null;
    const cmd = request?.cmd;
    const args = request?.args ?? {};
    if (cmd === "exit") {
        await exitNow({ id, ok: true, result: { exiting: true } });
        return;
    }
    if (exiting) {
        respond({ id, ok: false, error: `${cmd}: the driver is exiting` });
        return;
    }
    const handler = typeof cmd === "string" && Object.hasOwn(commands, cmd) ? commands[cmd] : undefined;
    if (!handler) {
        respond({ id, ok: false, error: `unknown command ${JSON.stringify(cmd)}; known: ${[...Object.keys(commands), "exit"].join(", ")}` });
        return;
    }
    let timer;
    try {
        if (typeof args !== "object" || Array.isArray(args)) throw new Error("args must be a JSON object");
        const timeoutMs = optional(args, "timeoutMs", "number", DEFAULT_TIMEOUT_MS);
        const started = Date.now();
        const overall = new Promise((_, reject) => {
            timer = setTimeout(
                () => reject(new Error(`command ${cmd} did not finish within ${timeoutMs} ms (+5 s grace)`)),
                timeoutMs + 5000,
            );
        });
        const result = await Promise.race([handler(args, timeoutMs), overall]);
        log(`${cmd}${args.name ? ` [${args.name}]` : ""} ok in ${Date.now() - started} ms`);
        respond({ id, ok: true, result: result ?? null });
    } catch (e) {
        const error = `${cmd}${args?.name ? ` [${args.name}]` : ""}: ${describeError(e)}`;
        log(`FAILED ${error}`);
        respond({ id, ok: false, error });
    } finally {
        clearTimeout(timer);
    }
}

const input = createInterface({ input: process.stdin, crlfDelay: Infinity });
input.on("line", (line) => {
    if (line.trim() === "") return;
    let request;
    try {
        request = JSON.parse(line);
    } catch (e) {
        respond({ id: null, ok: false, error: `request is not JSON (${e.message}): ${line.slice(0, 200)}` });
        return;
    }
    const task = handle(request)
        .catch((e) => log("internal error:", describeError(e)))
        .finally(() => inFlight.delete(task));
    if (request?.cmd !== "exit") inFlight.add(task);
});
input.on("close", () => exitNow(null).catch((e) => log("internal error:", describeError(e))));
log(`ready: node ${process.version}, matrix-js-sdk ${SDK_VERSION}`);
