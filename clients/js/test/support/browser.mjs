// Headless Chromium for the browser tests: Debian's `chromium` package,
// driven by playwright-core through the installed binary (never a browser
// Playwright downloads).
import { chromium } from 'playwright-core';
import { eventually } from './stack.mjs';

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    // Playwright gives each launch a fresh profile (--user-data-dir). The
    // rest keep Chromium from calling out: this network has no way out, and
    // those connections would only be refused.
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--no-default-browser-check',
    ],
  });
}

/**
 * A tab in a context of its own (its own cookie jar: another browser, as far
 * as the server can tell), with what it logs and the CSP violations it meets
 * collected, and its POST /v1/tickets counted.
 */
export async function newTab(browser, url, { context } = {}) {
  const ctx = context ?? (await browser.newContext({ viewport: { width: 760, height: 560 } }));
  const page = await ctx.newPage();
  const tab = { context: ctx, page, console: [], tickets: 0, frames: [] };
  page.on('console', (message) => tab.console.push(`${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => tab.console.push(`pageerror: ${error.message}`));
  page.on('request', (request) => {
    if (request.method() === 'POST' && new URL(request.url()).pathname === '/v1/tickets') tab.tickets++;
  });
  page.on('websocket', (socket) => {
    socket.on('framesent', (frame) => tab.frames.push({ url: socket.url(), payload: String(frame.payload) }));
  });
  await page.goto(url);
  return tab;
}

export const text = (page, id) => page.getByTestId(id).first().textContent();

/** Waits until the element's text satisfies `check` (a string: equals it). */
export async function waitText(page, id, check, ms = 15_000) {
  const test = typeof check === 'string' ? (t) => t === check : check;
  let last;
  try {
    return await eventually(async () => {
      last = await text(page, id);
      return test(last) ? last : false;
    }, ms, `[data-testid=${id}]`);
  } catch (error) {
    error.message += ` (last text: ${JSON.stringify(last)})`;
    throw error;
  }
}

export async function logIn(page, { username, password }) {
  await page.getByTestId('username').fill(username);
  await page.getByTestId('password').fill(password);
  await page.getByTestId('login').click();
  await waitText(page, 'connection-state', 'connected');
}

export async function joinRoom(page, room) {
  await page.getByTestId('channel').fill(room);
  await page.getByTestId('join').click();
}

export async function say(page, message) {
  await page.getByTestId('message-input').fill(message);
  await page.getByTestId('send').click();
}

/** The texts of the message list's entries. */
export function messages(page) {
  return page.getByTestId('messages').getByTestId('message').allTextContents();
}

/** How many entries include `needle`. */
export async function count(page, needle) {
  return (await messages(page)).filter((t) => t.includes(needle)).length;
}
