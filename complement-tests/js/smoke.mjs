// Manual smoke test of driver.mjs against a running Hearth server, speaking the
// same line protocol as the Rust wrapper (complement-tests/src/js.rs).
//
//   NODE_EXTRA_CA_CERTS=<data>/tls/cert.pem node smoke.mjs https://127.0.0.1:<port> [--encrypted] [--no-crypto] [--leave]
//
// Registers two users, has the first create a room and invite the second, then
// sends a message each way and waits for the other side to receive it. With
// --encrypted the room is end-to-end encrypted and the crypto commands
// (device tracking, cross-signing, key backup) run too. Exits non-zero on the
// first failure. The driver's log goes to this process's stderr. --no-crypto
// starts the clients without initRustCrypto (for servers without the
// end-to-end encryption endpoints: with crypto, joining a room one was
// invited to queries the inviter's keys). --leave then has bob leave and be
// invited back.

import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const baseUrl = process.argv[2];
const encrypted = process.argv.includes("--encrypted");
const crypto = !process.argv.includes("--no-crypto");
if (!baseUrl?.startsWith("https://")) {
    console.error("usage: node smoke.mjs https://127.0.0.1:<port> [--encrypted] [--no-crypto] [--leave]");
    process.exit(2);
}

const driver = spawn(process.execPath, [fileURLToPath(new URL("./driver.mjs", import.meta.url))], {
    stdio: ["pipe", "pipe", "inherit"],
});
const pending = new Map();
let nextId = 1;
createInterface({ input: driver.stdout }).on("line", (line) => {
    const msg = JSON.parse(line);
    const waiter = pending.get(msg.id);
    if (!waiter) throw new Error(`unexpected answer: ${line}`);
    pending.delete(msg.id);
    waiter(msg);
});
driver.on("exit", (code) => {
    for (const waiter of pending.values()) waiter({ ok: false, error: `driver exited with ${code}` });
});

function call(cmd, args = {}) {
    const id = nextId++;
    driver.stdin.write(JSON.stringify({ id, cmd, args }) + "\n");
    return new Promise((resolve) => pending.set(id, resolve)).then((msg) => {
        console.log(`${cmd} -> ${JSON.stringify(msg.ok ? msg.result : { error: msg.error })}`);
        if (!msg.ok) throw new Error(`${cmd} failed: ${msg.error}`);
        return msg.result;
    });
}

const suffix = Date.now().toString(36);
const password = "a long password for the smoke test";
try {
    await call("ping");
    const alice = await call("register", { name: "alice", baseUrl, user: `alice_${suffix}`, password, crypto });
    const bob = await call("register", { name: "bob", baseUrl, user: `bob_${suffix}`, password, crypto });
    const { roomId } = await call("createRoom", { name: "alice", encrypted, invite: [bob.userId] });
    await call("waitForInvite", { name: "bob", roomId, timeoutMs: 10_000 });
    await call("join", { name: "bob", roomId });
    await call("waitForMembership", { name: "alice", roomId, userId: bob.userId, membership: "join", timeoutMs: 10_000 });
    await call("sendText", { name: "alice", roomId, body: "hello from alice" });
    await call("waitForMessage", { name: "bob", roomId, body: "hello from alice", timeoutMs: 10_000 });
    await call("sendText", { name: "bob", roomId, body: "hello from bob" });
    await call("waitForMessage", { name: "alice", roomId, body: "hello from bob", sender: bob.userId, timeoutMs: 10_000 });
    if (encrypted) {
        await call("deviceIds", { name: "alice", userId: bob.userId });
        await call("ownDeviceKeys", { name: "bob" });
        // A second device of alice's: bob must track it and encrypt for it.
        const alice2 = await call("login", { name: "alice2", baseUrl, user: `alice_${suffix}`, password, crypto });
        await call("deviceIds", {
            name: "bob",
            userId: alice.userId,
            includes: [alice.deviceId, alice2.deviceId],
            timeoutMs: 10_000,
        });
        await call("sendText", { name: "bob", roomId, body: "to both of alice's devices" });
        await call("waitForMessage", { name: "alice2", roomId, body: "to both of alice's devices", timeoutMs: 10_000 });
        await call("bootstrapCrossSigning", { name: "alice", password });
        // Replacing existing cross-signing keys needs the password stage. The
        // pause lets the key queries the first upload set off finish: one that
        // answers with the old keys after the reset makes the crypto layer
        // drop the new private keys (ready: false).
        await new Promise((resolve) => setTimeout(resolve, 1500));
        await call("bootstrapCrossSigning", { name: "alice", password, reset: true });
        await call("createKeyBackup", { name: "alice" });
        await call("keyBackupInfo", { name: "alice" });
        // Someone joining a public room later sees the earlier message but
        // cannot decrypt it; the timeout error names the decryption failure.
        const carol = await call("register", { name: "carol", baseUrl, user: `carol_${suffix}`, password, crypto });
        const later = await call("createRoom", { name: "alice", encrypted: true, preset: "public_chat" });
        await call("sendText", { name: "alice", roomId: later.roomId, body: "before carol joined" });
        await call("join", { name: "carol", roomId: later.roomId });
        await call("sendText", { name: "alice", roomId: later.roomId, body: "after carol joined" });
        await call("waitForMessage", { name: "carol", roomId: later.roomId, body: "after carol joined", timeoutMs: 10_000 });
        const early = await call("waitForMessage", {
            name: "carol",
            roomId: later.roomId,
            body: "before carol joined",
            timeoutMs: 1_000,
        }).then(
            () => null,
            (e) => e.message,
        );
        if (early === null) throw new Error("carol decrypted a message sent before she joined");
        if (!early.includes("UNABLE TO DECRYPT")) throw new Error("the timeout error should name the decryption failure");
    }
    if (process.argv.includes("--leave")) {
        // (In an encrypted room whose history is shared, the sdk's invite
        // first uploads the room keys for the invitee as media.)
        await call("leave", { name: "bob", roomId });
        await call("waitForMembership", { name: "alice", roomId, userId: bob.userId, membership: "leave", timeoutMs: 10_000 });
        await call("invite", { name: "alice", roomId, userId: bob.userId });
        await call("waitForInvite", { name: "bob", roomId, timeoutMs: 10_000 });
        await call("join", { name: "bob", roomId });
    }
    // A failing wait must fail quickly and say what it saw.
    await call("waitForMessage", { name: "bob", roomId, body: "never sent", timeoutMs: 500 }).then(
        () => {
            throw new Error("waiting for a message nobody sent succeeded");
        },
        () => {},
    );
    await call("stop", { name: "bob" });
    await call("exit");
    console.log(`SMOKE OK (${encrypted ? "encrypted" : "unencrypted"} room, crypto ${crypto ? "on" : "off"}; alice ${alice.userId}, bob ${bob.userId})`);
} catch (e) {
    console.error(`SMOKE FAILED: ${e.message}`);
    driver.kill();
    process.exit(1);
}
