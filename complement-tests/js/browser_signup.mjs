// Drives headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core) through Hearth's own pages as a person would: sign up,
// set up an authenticator app from the key the page shows (the code is
// computed with otpauth), sign out, and sign in again with the password and
// a code. Prints one JSON line: {"ok": true, "userId", "recoveryCode"} or
// {"ok": false, "error", "page"}.
//
// Environment: HEARTH_URL (the server), HEARTH_USER, HEARTH_PASSWORD,
// HEARTH_CHROMIUM (default /usr/bin/chromium).

import { chromium } from "playwright-core";
import * as OTPAuth from "otpauth";

const base = process.env.HEARTH_URL;
const user = process.env.HEARTH_USER;
const password = process.env.HEARTH_PASSWORD;
const executablePath = process.env.HEARTH_CHROMIUM || "/usr/bin/chromium";

function totpAt(secret, offsetSeconds) {
  const totp = new OTPAuth.TOTP({ secret: OTPAuth.Secret.fromBase32(secret), algorithm: "SHA1", digits: 6, period: 30 });
  return totp.generate({ timestamp: Date.now() + offsetSeconds * 1000 });
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath,
  headless: true,
  // Everything stays on loopback: no background traffic to the internet.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
// The test server's certificate is self-signed.
const context = await browser.newContext({ ignoreHTTPSErrors: true });
const page = await context.newPage();
page.setDefaultTimeout(20_000);
try {
  // Sign up.
  await page.goto(`${base}/_hearth/register`);
  await page.fill("#displayname", "Browser User");
  await page.fill("#email", `${user}@example.org`);
  await page.fill("#username", user);
  await page.fill("#password", password);
  await page.fill("#password2", password);
  await page.click("button:has-text('Create account')");
  await page.waitForURL("**/_hearth/account");
  const userId = (await page.textContent("#user-id")).trim();
  expect(userId.startsWith(`@${user}:`), `signed in as ${userId}`);
  expect((await page.textContent("#totp-status")).trim() === "Off.", "two-factor starts off");

  // Set up the authenticator app from the key on the page.
  await page.fill("#totp-password", password);
  await page.click("button:has-text('Set up an authenticator app')");
  const qrWidth = await page.$eval("#totp-qr", (img) => img.naturalWidth);
  expect(qrWidth > 0, "the QR code image renders");
  const secret = (await page.textContent("#totp-secret")).trim();
  await page.fill("#code", totpAt(secret, 0));
  await page.click("button:has-text('Turn on')");
  const recovery = await page.$$eval("#recovery-codes li", (items) => items.map((li) => li.textContent.trim()));
  expect(recovery.length === 10, `10 recovery codes, got ${recovery.length}`);
  await page.click("text=back to my account");
  expect((await page.textContent("#totp-status")).startsWith("On:"), "two-factor is on");

  // Sign out, then in again with the password and the next code.
  await page.click("button:has-text('Sign out')");
  await page.waitForSelector("#username");
  await page.goto(`${base}/_hearth/account`);
  expect((await page.content()).includes("Sign in to manage your account"), "signed out");
  await page.fill("#username", user);
  await page.fill("#password", password);
  await page.click("button:has-text('Sign in')");
  await page.waitForSelector("#code");
  await page.fill("#code", totpAt(secret, 30));
  await page.click("button:has-text('Continue')");
  await page.waitForURL("**/_hearth/account");
  expect((await page.textContent("#user-id")).trim() === userId, "signed in again");

  console.log(JSON.stringify({ ok: true, userId, recoveryCode: recovery[0] }));
} catch (e) {
  let html = "";
  try {
    html = await page.content();
  } catch {}
  console.log(JSON.stringify({ ok: false, error: String(e && e.stack ? e.stack : e), page: html.slice(0, 4000) }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
